"""The Kafka exporter against a real Kafka-protocol broker (Tansu): produce, consume, compare."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sensorium_testlib import feed

from sensorium.events import Event
from sensorium.exporting import ExporterContextImpl
from sensorium.metrics import Metrics
from sensorium.testing import make_event, runner_for, wait_until
from sensorium_exporters.kafka import KafkaExporter, KafkaOptions

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "peers" / "kafka.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, d: Path) -> None:
        self.dir, self.port = d, free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def start(self, topics: tuple[str, ...] = ()) -> None:
        res = subprocess.run([str(SCRIPT), "start", str(self.dir), str(self.port)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot start the Tansu broker: {res.stderr.strip()[-400:]}")
        for t in topics:
            self.create_topic(t)

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.dir)], check=True, capture_output=True)

    def crash(self) -> None:
        """SIGKILL: the broker dies at once, mid-request (a graceful stop would drain first)."""
        pid = int((self.dir / "tansu.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
                   5, "the broker to die")
        self.stop()  # clears the pidfile

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": logging.getLogger("test.kafka.admin")})
        for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
            try:
                f.result(10)
            except confluent_kafka.KafkaException as exc:
                # A producer's metadata request may have created it already (broker auto-create).
                if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "tansu")
    try:
        b.start(("events",))
        yield b
    finally:
        b.stop()


class Collector:
    """A consumer reading the topic from the start on its own thread (the broker keeps data in memory
    only, so what was consumed before a restart is what counts)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.messages: list[tuple[bytes | None, bytes]] = []
        self._stop = threading.Event()
        self._c = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}", "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": 6000, "topic.metadata.refresh.interval.ms": 500,
            "fetch.wait.max.ms": 20,
            "logger": logging.getLogger("test.kafka.consumer"),  # its reconnect noise goes to pytest's log capture
        })
        self.assigned = threading.Event()
        self._c.subscribe([topic], on_assign=lambda c, parts: self.assigned.set())
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        # Joining the group takes seconds: wait, so "consumed" means "seen as it was produced".
        if not self.assigned.wait(30):
            raise TimeoutError("the consumer got no partition assignment")

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self._c.poll(0.2)
            if m is not None and not m.error():
                self.messages.append((m.key(), m.value()))

    def values(self) -> list[bytes]:
        return [v for _, v in self.messages]

    def wait(self, n: int, timeout: float = 30) -> list[bytes]:
        return wait_until(lambda: self.values() if len(self.messages) >= n else None, timeout,
                          f"{n} messages (got {len(self.messages)})")

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._t.join(5)
            self._c.close()


def exporter(bootstrap: str, metrics_ctx: ExporterContextImpl | None = None, **opts) -> KafkaExporter:
    opts.setdefault("delivery_timeout_ms", 3000)
    opts.setdefault("connect_timeout_s", 2)
    return KafkaExporter(KafkaOptions(brokers=[bootstrap], topic="events", **opts),
                         metrics_ctx or ExporterContextImpl("kafka", "node-1"))


def evs(n: int, start: int = 0) -> list[Event]:
    return [make_event(pid=i, namespace="prod", pod=f"web-{i % 3}") for i in range(start, start + n)]


def test_consumed_messages_equal_submitted_events(broker: Broker) -> None:
    col = Collector(broker.bootstrap, "events")
    m = Metrics()
    ctx = ExporterContextImpl("kafka", "node-1", m)
    r = runner_for(exporter(broker.bootstrap, ctx, key="pod", compression="zstd"), name="kafka", metrics=m, ctx=ctx,
                   batch_size=100)
    r.start()
    events = evs(1000)
    r.submit(events)
    try:
        got = col.wait(1000)
    finally:
        r.stop(10)
        col.close()
    assert got == [e.json() for e in events]
    assert [k for k, _ in col.messages[:3]] == [b"prod/web-0", b"prod/web-1", b"prod/web-2"]
    assert r.stats()["exporter"]["delivered"] == 1000
    assert 'sensorium_exporter_plugin_events_total{exporter="kafka",metric="delivered"} 1000.0' in m.scrape().decode()


def test_broker_down_at_start_then_started_delivers_in_order(tmp_path: Path) -> None:
    b = Broker(tmp_path / "tansu")
    r = runner_for(exporter(b.bootstrap), batch_size=50, backoff_max_s=0.5)
    r.start()
    events = evs(300)
    r.submit(events)
    wait_until(lambda: r.stats()["failed"] >= 1, 15, "a failed open")
    assert r.stats()["exported"] == 0 and "did not answer" in r.stats()["last_error"]
    col = None
    try:
        b.start(("events",))
        col = Collector(b.bootstrap, "events")
        assert col.wait(300) == [e.json() for e in events]
        r.stop(10)
        assert r.stats()["exported"] == 300 and r.stats()["dropped"] == 0
        assert set(r.stats()["failures_by_reason"]) == {"peer_unreachable"}  # open: the brokers did not answer
    finally:
        r.stop(0)
        if col is not None:
            col.close()
        b.stop()


@pytest.mark.parametrize("down_s", [0.5, 4.0], ids=["short-outage", "outage-past-delivery-timeout"])
def test_broker_restarted_mid_stream_keeps_order(broker: Broker, down_s: float) -> None:
    col = Collector(broker.bootstrap, "events")
    r = runner_for(exporter(broker.bootstrap, delivery_timeout_ms=1000), batch_size=20, backoff_max_s=0.5)
    r.start()
    total = 600
    events = evs(total)
    t, done = feed(r, events, 20, 0.1)
    want = [e.json() for e in events]
    after: Collector | None = None
    try:
        col.wait(100)
        assert not done.is_set(), "the stream ended before the restart"
        broker.crash()
        before = col.values()  # the old broker is dead: nothing more can come from its log
        col.close()
        time.sleep(down_s)
        broker.start(("events",))
        # The broker keeps data in memory only: read the new log from its start with a new consumer.
        after = Collector(broker.bootstrap, "events")
        t.join()
        wait_until(lambda: after.values() and after.values()[-1] == want[-1], 60, "the last event after the restart")
        r.stop(10)
    finally:
        col.close()
        if after is not None:
            after.close()
    pre = [want.index(v) for v in before]
    post = [want.index(v) for v in after.values()]
    seq = pre + post
    first_seen = list(dict.fromkeys(seq))
    assert first_seen == sorted(first_seen), "events out of order"
    dups = len(seq) - len(first_seen)
    # What the crashed broker had acknowledged but nobody had read yet died with its memory: such
    # events may only sit between the last one read before the crash and the first one after it.
    missing = sorted(set(range(total)) - set(seq))
    assert all(max(pre) < m < min(post) for m in missing), f"events missing elsewhere: {missing[:20]}"
    print(f"read before the crash: {len(pre)}, lost with the broker's memory: {len(missing)}, "
          f"duplicates: {dups}; stats: {r.stats()}")
    # Only a re-sent tail of one batch can repeat (see the exporter's docstring).
    assert dups <= 20 and len(missing) <= 40
    st = r.stats()
    # Nothing given up on by the agent: what is missing died acknowledged in the broker's memory.
    assert st["dropped"] == 0 and st["delivered"] == total and st["unconfirmed"] == 0
    if down_s > 1.0:
        assert st["failed"] >= 1 and st["retries"] >= 1  # the runner, not librdkafka, recovered
        # The same per-reason books as every exporter: why deliveries failed, and what was written again.
        assert st["failures_by_reason"] and set(st["failures_by_reason"]) <= {"timeout", "peer_unreachable"}
        assert sum(st["retried_by_reason"].values()) == st["retried"] > 0
        from reliability_figures import record

        record("kafka_broker_crash.events", total)
        record("kafka_broker_crash.dropped_by_agent", st["dropped"])
        record("kafka_broker_crash.lost_in_broker_memory", len(missing),
               note="acknowledged by the in-memory broker before its SIGKILL and never read: not an agent loss")
        record("kafka_broker_crash.duplicates", dups)
        record("kafka_broker_crash.failures_by_reason", st["failures_by_reason"])
        record("kafka_broker_crash.retried_by_reason", st["retried_by_reason"])


# ---- options -------------------------------------------------------------------------------------


def test_tls_and_sasl_options_become_librdkafka_settings(tmp_path: Path) -> None:
    from sensorium_exporters.kafka import producer_config

    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    o = KafkaOptions(brokers=["k1:9093", "k2:9093"], topic="t", tls={"ca_file": "/etc/ssl/certs/ca-certificates.crt"},
                     sasl={"mechanism": "SCRAM-SHA-256", "username": "agent", "password_file": str(pw)},
                     compression="zstd", acks="all", linger_ms=7)
    conf = producer_config(o, "c")
    assert conf["security.protocol"] == "sasl_ssl" and conf["sasl.mechanism"] == "SCRAM-SHA-256"
    assert conf["sasl.username"] == "agent" and conf["sasl.password"] == "s3cret"
    assert conf["ssl.ca.location"] == "/etc/ssl/certs/ca-certificates.crt"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert (conf["bootstrap.servers"] == "k1:9093,k2:9093" and conf["compression.type"] == "zstd"
            and conf["linger.ms"] == 7)
    confluent_kafka.Producer(conf)  # librdkafka itself accepts the whole configuration


def test_a_bad_ca_file_fails_open_with_librdkafkas_reason(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    ex = KafkaExporter(KafkaOptions(brokers=["127.0.0.1:1"], topic="t", tls={"ca_file": str(bad)}),
                       ExporterContextImpl("kafka", "n"))
    with pytest.raises(confluent_kafka.KafkaException, match=r"ssl.ca.location"):
        ex.open()


@pytest.mark.parametrize(
    "opts, where",
    [
        ({"acks": "1"}, "idempotence needs acks: all"),
        ({"brokers": ["nohost"]}, "brokers.0"),
        ({"topic": "bad topic"}, "topic"),
        ({"sasl": {"username": "u"}}, "set exactly one of password and password_file"),
        ({"key": "container"}, "key"),
    ],
)
def test_bad_options_are_rejected(opts: dict, where: str) -> None:
    from pydantic import ValidationError

    base = {"brokers": ["127.0.0.1:9092"], "topic": "t"}
    with pytest.raises(ValidationError, match=where.replace(".", r"\.")):
        KafkaOptions(**{**base, **opts})
