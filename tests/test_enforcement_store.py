"""The state directory and pin root of persistent enforcement (`sensorium.persistence`) against hostile
contents: every file or directory that is not the agent's own (a link, another owner, writable by others,
corrupt, oversized, of the wrong shape) gets a one-line reason naming it, and nothing behind a link is read
or removed. The agent-level consequences (a start error; a block that stays) are in
tests/test_persistent_enforcement.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from enforcement_helpers import new_pin_root, remove_pins

from sensorium.persistence import MAX_RECORD_BYTES, EnforcementStore, UntrustedFile, _hash, remove_pin_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpffs, chown)")

NOBODY = 65534


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EnforcementStore]:
    root = new_pin_root()
    s = EnforcementStore(root, tmp_path / "state")
    assert s.check() is None
    yield s
    remove_pins(root)
    assert not root.exists()


def keep(store: EnforcementStore, key: str = "p") -> Path:
    store.keep_policy(key, "apiVersion: cilium.io/v1alpha1\n", "p.yaml", "enforcement", "enabled")
    return store.state_dir / "policies" / f"{_hash(key)}.json"


def problems(store: EnforcementStore) -> list[str]:
    return [why for _f, rec, why in store.kept_policies() if rec is None]


def test_a_kept_record_reads_back_with_its_fields(store):
    keep(store, "ns/p.q")
    [(f, rec, why)] = list(store.kept_policies())
    assert why is None and rec["key"] == "ns/p.q" and rec["mode"] == "enforcement" and rec["state"] == "enabled"
    assert os.stat(f).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage, expect", [
    (lambda f: f.write_bytes(f.read_bytes()[:40]), "not valid JSON: Unterminated string starting at (line 1, column 36)"),
    (lambda f: f.write_bytes(b"\xff\xfe{}"), "not UTF-8 (byte 0)"),
    (lambda f: f.write_text("[1, 2]"), "not a kept policy record (a JSON object was expected)"),
    (lambda f: f.write_text("[" * 100000 + "]" * 100000), "not a record the agent wrote (nested too deep)"),
    (lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "mode": "loud"})),
     "field 'mode': 'loud' is not one of enforcement, monitoring"),
    (lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "state": True})),
     "field 'state': True is not one of enabled, disabled"),
    (lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "text": 7})),
     "field 'text': a non-empty string is required"),
    (lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "key": "other"})),
     "holds policy 'other', whose record is named"),
    (lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "version": 2})), "field 'version': 2 is not 1"),
    (lambda f: f.write_bytes(b" " * (MAX_RECORD_BYTES + 1)), f"more than the {MAX_RECORD_BYTES} the agent writes"),
    (lambda f: os.chmod(f, 0o666), "is writable by group or others (mode 0666)"),
    (lambda f: os.chown(f, NOBODY, NOBODY), f"is owned by uid {NOBODY}, not by the agent's user (uid 0)"),
    (lambda f: (f.unlink(), f.mkdir()), "is not a regular file"),
])
def test_a_damaged_kept_record_is_refused_naming_the_file_and_the_fault(store, damage, expect):
    f = keep(store)
    damage(f)
    [why] = problems(store)
    assert why.startswith(str(f)) and expect in why and "\n" not in why, why
    assert store.is_kept("p")  # still counts as kept: its pins are not swept (fail closed)


def test_a_kept_record_replaced_by_a_link_is_neither_followed_nor_written_through(store, tmp_path):
    f = keep(store)
    target = tmp_path / "elsewhere.json"
    target.write_bytes(f.read_bytes())
    f.unlink()
    f.symlink_to(target)
    [why] = problems(store)
    assert why == f"{f} is a symbolic link (to {target}), not a file the agent wrote"
    with pytest.raises(UntrustedFile, match="symbolic link"):
        store.update_policy("p", mode="monitoring")
    assert json.loads(target.read_text())["mode"] == "enforcement" and f.is_symlink()
    store.forget_policy("p")  # `policy delete` removes the link, never what it points to
    assert not os.path.lexists(f) and target.exists()


def test_a_file_of_another_name_in_the_policies_directory_is_reported(store):
    (store.state_dir / "policies" / "notes.txt").write_text("x")
    assert problems(store) == [f"{store.state_dir / 'policies' / 'notes.txt'}: not a kept policy record "
                               "(the agent writes only *.json here)"]


@pytest.mark.parametrize("make, expect", [
    (lambda d, t: (os.rmdir(d / "policies"), os.symlink(t, d / "policies")), "policies is a symbolic link (to "),
    (lambda d, t: os.chmod(d, 0o777), "state is writable by group or others (mode 0777)"),
    (lambda d, t: os.chown(d / "pins", NOBODY, 0), f"pins is owned by uid {NOBODY}, not by the agent's user"),
    (lambda d, t: (os.rmdir(d / "pins"), (d / "pins").write_text("")), "pins is not a directory"),
])
def test_a_state_directory_that_is_not_the_agents_own_stops_the_start(store, tmp_path, make, expect):
    other = tmp_path / "other"
    other.mkdir()
    make(store.state_dir, other)
    where, why = store.check()
    assert where == "state_dir" and expect in why and "nothing was changed" in why and "\n" not in why, why
    assert list(other.iterdir()) == []


def test_a_state_directory_that_is_a_link_stops_the_start(tmp_path):
    root = new_pin_root()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(real)
    try:
        where, why = EnforcementStore(root, tmp_path / "state").check()
        assert where == "state_dir" and why.startswith(f"{tmp_path / 'state'} is a symbolic link (to {real})")
    finally:
        remove_pins(root)


def test_a_pin_root_writable_by_others_stops_the_start(tmp_path):
    root = new_pin_root()
    root.mkdir(mode=0o700)
    os.chmod(root, 0o777)
    try:
        where, why = EnforcementStore(root, tmp_path / "state").check()
        assert (where, why.split(";")[0]) == ("pin_dir", f"{root} is writable by group or others (mode 0777)")
    finally:
        remove_pins(root)


def test_a_link_in_the_pin_root_is_left_alone_and_what_it_points_to_is_never_removed(store):
    other = Path(str(store.pin_root) + "-other")
    other.mkdir()
    try:
        (other / "inner").mkdir()
        os.symlink(other, store.pin_root / "evil@1")
        os.symlink(other, store.pin_root / "notagen")
        gen = store.new_generation("p", ["lsmhooks"], "api")
        gens = store.generations()
        assert [g.path for g in gens] == [gen]
        assert sorted(i["path"] for i in store.ignored) == [str(store.pin_root / "evil@1"),
                                                            str(store.pin_root / "notagen")]
        assert any("is a symbolic link" in i["why"] for i in store.ignored)
        remove_pin_tree(store.pin_root)
        assert (other / "inner").is_dir()
    finally:
        for p in (other / "inner", other):
            if p.exists():
                p.rmdir()


def test_a_pin_description_naming_another_policy_does_not_move_the_generation(store):
    gen = store.new_generation("p", ["lsmhooks"], "api")
    meta = store.state_dir / "pins" / f"{gen.name}.json"
    meta.write_text(json.dumps({"policy": "someone-else", "pid": 1}))
    [g] = store.generations()
    assert g.key == "p"
    meta.write_text("{")
    [g] = store.generations()
    assert g.key == "p" and "not valid JSON" in g.meta["meta_error"]


def test_generations_made_under_a_permissive_umask_are_still_trusted(store):
    # A unit or container may run the agent with umask 0: what the agent makes must still pass its own checks.
    old = os.umask(0)
    try:
        gen = store.new_generation("p", ["lsmhooks"], "api")
        store.keep_policy("p", "x", None, "enforcement", "enabled")
    finally:
        os.umask(old)
    assert [g.path for g in store.generations()] == [gen] and store.ignored == []
    assert [why for _f, _rec, why in store.kept_policies()] == [None]


def test_persistence_mounts_bpffs_on_sys_fs_bpf_when_absent(tmp_path):
    """Nothing mounts bpffs but pinning: a persistent agent whose pin root is under an unmounted /sys/fs/bpf
    mounts it there. Run in a mount namespace of its own (unshare -m, private propagation), so the
    machine's mounts are never touched."""
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from sensorium.persistence import EnforcementStore, bpffs_of\n"
        "subprocess.run(['mount', '--make-rprivate', '/'], check=True)\n"
        "subprocess.run(['umount', '/sys/fs/bpf'], capture_output=True)\n"
        "assert bpffs_of(Path('/sys/fs/bpf/x')) is None, 'bpffs still mounted in the namespace'\n"
        f"print(EnforcementStore(Path('/sys/fs/bpf/sensorium-t'), Path({str(tmp_path / 'state')!r})).check())\n"
        "print(bpffs_of(Path('/sys/fs/bpf/sensorium-t')))\n")
    r = subprocess.run(["unshare", "-m", sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "/sys/fs/bpf"]
