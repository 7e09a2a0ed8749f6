"""The Kafka exporter (confluent-kafka / librdkafka): one JSON event per message.

    {type: kafka, brokers: [10.0.0.1:9092], topic: sensorium-events, key: pod, compression: zstd,
     acks: all, idempotence: true, linger_ms: 20, tls: {ca_file: ...}, sasl: {mechanism: SCRAM-SHA-512, ...}}

``write_batch`` hands the batch to librdkafka (which batches by ``linger_ms`` and retries with
backoff on its own) and returns once every message of the batch is acknowledged or has definitively
failed (``delivery_timeout_ms``). Delivery reports are counted (``delivered``, ``delivery_failed``).
When a message fails, the events before it are reported delivered (`PartialWrite`) and the runner
retries from the first failed one; so after a broker outage events arrive in order, and the only
duplicates possible are messages of the failed tail that the broker did store before the failure.
``open`` checks that the brokers answer and the topic exists; when they do not, the runner retries
with backoff while events wait in its bounded queue. Failures carry the host's reasons (`failure_reason`):
a delivery that timed out is ``timeout``, brokers that cannot be reached ``peer_unreachable``, an error
answered by the broker (or a missing topic) ``rejected``, so the runner's per-reason counters say why.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from sensorium.events import Event
from sensorium.hookspecs import ExporterContext, ExportError, ExporterSpec, PartialWrite
from sensorium.provide import provide
from sensorium.targets import check_readable_files


class KafkaTls(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = None
    verify_hostname: bool = True


class KafkaSasl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str
    password: str | None = None
    password_file: Path | None = Field(default=None, description="Read the password from this file (a Secret mount)")

    @model_validator(mode="after")
    def _one_password(self) -> KafkaSasl:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password and password_file")
        return self


def _check_broker(b: str) -> str:
    host, _, port = b.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {b!r}")
    return b


# Checked one by one so an error names the item: exporters[2].brokers[1]
Broker = Annotated[str, AfterValidator(_check_broker)]


def _split_brokers(v: Any) -> Any:
    # librdkafka's own bootstrap.servers form, "HOST:PORT[,HOST:PORT]", is what users copy from elsewhere:
    # unambiguous, so taken as the list it means (empty items are kept, to be refused by name).
    if isinstance(v, str):
        return [b.strip() for b in v.split(",")]
    return v


class KafkaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    brokers: Annotated[list[Broker], BeforeValidator(_split_brokers)] = Field(
        min_length=1, description="host:port of bootstrap brokers: a list, or one comma-separated string")
    topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    key: Literal["node", "pod", "none"] = Field(default="node", description="Message key (partitioning, order per key)")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    acks: Literal["all", "1", "0", 1, 0, -1] = "all"
    idempotence: bool = True
    linger_ms: int = Field(default=20, ge=0, le=60_000)
    batch_max_messages: int = Field(default=10_000, ge=1, le=1_000_000)
    local_queue_max_messages: int = Field(default=100_000, ge=1, le=10_000_000,
                                          description="librdkafka's bounded in-process queue")
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000, le=3_600_000,
                                     description="How long librdkafka retries a message before failing it")
    retry_backoff_ms: int = Field(default=100, ge=1, le=60_000)
    retry_backoff_max_ms: int = Field(default=1_000, ge=1, le=60_000)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300, description="open(): wait for broker metadata")
    tls: KafkaTls | None = None
    sasl: KafkaSasl | None = None
    librdkafka: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra librdkafka settings (applied last)"
    )

    @model_validator(mode="after")
    def _v_idempotence(self) -> KafkaOptions:
        if self.idempotence and str(self.acks) not in ("all", "-1"):
            raise ValueError("idempotence needs acks: all")
        return self


def producer_config(o: KafkaOptions, client_id: str) -> dict[str, Any]:
    """The librdkafka configuration for these options."""
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(o.brokers),
        "client.id": client_id,
        "acks": "all" if str(o.acks) in ("all", "-1") else str(o.acks),
        "enable.idempotence": o.idempotence,
        "compression.type": o.compression,
        "linger.ms": o.linger_ms,
        "batch.num.messages": o.batch_max_messages,
        "queue.buffering.max.messages": o.local_queue_max_messages,
        "message.timeout.ms": o.delivery_timeout_ms,
        "retry.backoff.ms": o.retry_backoff_ms,
        "retry.backoff.max.ms": max(o.retry_backoff_ms, o.retry_backoff_max_ms),
        "reconnect.backoff.ms": o.retry_backoff_ms,
        "reconnect.backoff.max.ms": max(o.retry_backoff_ms, o.retry_backoff_max_ms),
    }
    if not o.idempotence:
        # Without idempotence a retried request could reorder messages: one request in flight.
        conf["max.in.flight.requests.per.connection"] = 1
    protocol = "plaintext"
    if o.tls is not None:
        protocol = "ssl"
        if o.tls.ca_file:
            conf["ssl.ca.location"] = str(o.tls.ca_file)
        if o.tls.cert_file:
            conf["ssl.certificate.location"] = str(o.tls.cert_file)
        if o.tls.key_file:
            conf["ssl.key.location"] = str(o.tls.key_file)
        if o.tls.key_password:
            conf["ssl.key.password"] = o.tls.key_password
        conf["ssl.endpoint.identification.algorithm"] = "https" if o.tls.verify_hostname else "none"
    if o.sasl is not None:
        protocol = "sasl_ssl" if o.tls is not None else "sasl_plaintext"
        conf["sasl.mechanism"] = o.sasl.mechanism
        conf["sasl.username"] = o.sasl.username
        conf["sasl.password"] = (
            o.sasl.password if o.sasl.password is not None else Path(o.sasl.password_file).read_text().strip()  # type: ignore[arg-type]
        )
    conf["security.protocol"] = protocol
    conf.update(o.librdkafka)
    return conf


def delivery_reason(err: Any) -> str:
    """The host's failure reason for a librdkafka delivery error (None: never acknowledged)."""
    from confluent_kafka import KafkaError

    if err is None:
        return "timeout"
    code = err.code()
    if code in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT):
        return "timeout"
    if code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
                KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
                KafkaError.BROKER_NOT_AVAILABLE, KafkaError.NOT_ENOUGH_REPLICAS):
        return "peer_unreachable"
    return "rejected"


def check_target(options: KafkaOptions) -> None:
    """Files the producer must read (TLS, SASL password) that are missing or not readable never get better
    by retrying: refuse them at start. Brokers that are down are not an error here (the runner retries)."""
    files: list[tuple[str, Path | None]] = []
    if options.tls is not None:
        files += [("tls.ca_file", options.tls.ca_file), ("tls.cert_file", options.tls.cert_file),
                  ("tls.key_file", options.tls.key_file)]
    if options.sasl is not None:
        files.append(("sasl.password_file", options.sasl.password_file))
    check_readable_files(files)

class KafkaExporter:
    def __init__(self, options: KafkaOptions, ctx: ExporterContext) -> None:
        self.options = options
        self.ctx = ctx
        self._producer: Any = None
        self._lock = threading.Lock()

    def open(self) -> None:
        from confluent_kafka import KafkaException, Producer  # imported here: no I/O or heavy import at plugin load

        conf = producer_config(self.options, f"sensorium-{self.ctx.node_name}")
        conf["error_cb"] = self._on_error
        conf["logger"] = self.ctx.log  # librdkafka's own log lines go to our logger, not to stderr
        producer = Producer(conf)
        try:
            md = producer.list_topics(self.options.topic, timeout=self.options.connect_timeout_s)
        except KafkaException as exc:
            del producer  # destroy it now: a failed producer would keep reconnecting in the background
            raise ExportError(f"kafka: brokers {','.join(self.options.brokers)} did not answer: {exc}",
                              code="peer_unreachable") from None
        topic = md.topics.get(self.options.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = topic.error.str() if topic is not None and topic.error is not None else "no partitions"
            del producer
            raise ExportError(f"kafka: topic {self.options.topic!r} is not available: {why}", code="rejected")
        self._producer = producer

    def _on_error(self, err: Any) -> None:
        self.ctx.log.debug("kafka: %s", err)  # transient; failures surface through delivery reports

    def _key(self, ev: Event) -> bytes | None:
        mode = self.options.key
        if mode == "none":
            return None
        if mode == "pod":
            pod = ev.process.get("pod")
            if isinstance(pod, Mapping) and pod.get("name"):
                return f"{pod.get('namespace', '')}/{pod['name']}".encode()
        return ev.node_name.encode()

    def write_batch(self, events: Sequence[Event]) -> None:
        if self._producer is None:
            self.open()
        p = self._producer
        n = len(events)
        errors: list[Any] = [None] * n
        acked = [False] * n

        def report(i: int) -> Any:
            def cb(err: Any, _msg: Any) -> None:
                acked[i] = True
                errors[i] = err
            return cb

        topic = self.options.topic
        for i, ev in enumerate(events):
            while True:
                try:
                    p.produce(topic, value=ev.json(), key=self._key(ev), on_delivery=report(i))
                    break
                except BufferError:
                    p.poll(0.05)  # librdkafka's bounded local queue is full: let it drain
        # Every message is acknowledged or failed by librdkafka within message.timeout.ms.
        left = p.flush(self.options.delivery_timeout_ms / 1000.0 + 5.0)
        delivered = sum(1 for i in range(n) if acked[i] and errors[i] is None)
        failed = [i for i in range(n) if not acked[i] or errors[i] is not None]
        if delivered:
            self.ctx.count("delivered", delivered)
        if not failed:
            return
        self.ctx.count("delivery_failed", len(failed))
        first = failed[0]
        err = errors[first]
        reason = f"kafka: delivery failed: {err.str() if err is not None else f'{left} messages not acknowledged'}"
        code = delivery_reason(err)
        if left:
            # Should not happen (flush waits past message.timeout.ms); drop this producer to be safe.
            p.purge()
            self._producer = None
        raise PartialWrite(first, reason, code=code)

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)

    def close(self) -> None:
        p, self._producer = self._producer, None
        if p is not None:
            try:
                p.flush(1.0)
            except Exception:  # noqa: BLE001 - close must not raise
                pass


sensorium_exporter = provide(ExporterSpec(
    name="kafka",
    description="One JSON event per Kafka message (librdkafka): keys, compression, acks, idempotence, TLS, SASL",
    options=KafkaOptions, factory=KafkaExporter, check=check_target,
))
