"""The kernel-independent rules (sensorium.policy_rules): what no kernel lets Sensorium serve is refused by
``sensorium policy check`` with the words ``policy add`` uses, without an agent or a kernel."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sensorium.cli import cli
from sensorium.plugins import PluginRegistry
from sensorium.policy import parse_policies
from sensorium.policy_rules import problems, validate_policies
from sensorium.yamlsrc import SourceError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import compat_table as C  # noqa: E402

SYSCALL = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: rules
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values: ["/etc/shadow"]
"""


@pytest.fixture(scope="module")
def reg() -> PluginRegistry:
    logging.disable(logging.CRITICAL)
    try:
        return PluginRegistry().discover()
    finally:
        logging.disable(logging.NOTSET)


def refusal(text: str, reg: PluginRegistry) -> str:
    with pytest.raises(SourceError) as err:
        validate_policies(text, "p.yaml", reg)
    return str(err.value)


def test_index_6_on_a_syscall_hook_is_refused(reg) -> None:
    assert refusal(SYSCALL.replace("index: 1\n      type", "index: 6\n      type"), reg) == \
        "p.yaml:10: spec.kprobes[0].args[0].index: refused kprobes[0] sys_openat: index 6: syscalls have 6 parameters (0..5)"


def test_index_6_on_a_kernel_function_is_refused(reg) -> None:
    text = SYSCALL.replace("sys_openat", "do_sys_openat2").replace("syscall: true", "syscall: false")
    assert refusal(text.replace("index: 1\n      type", "index: 6\n      type"), reg) == (
        "p.yaml:10: spec.kprobes[0].args[0].index: refused kprobes[0] do_sys_openat2: index 6: the first 6 "
        "parameters (0..5) of a kernel function or syscall can be read")


def test_a_nul_byte_in_a_string_value_is_refused(reg) -> None:
    assert refusal(SYSCALL.replace('"/etc/shadow"', '"/etc/sha\\0dow"'), reg) == (
        "p.yaml:16: spec.kprobes[0].selectors[0].matchArgs[0].values: refused kprobes[0] sys_openat: string "
        "values cannot contain NUL bytes")


def test_a_trailing_nul_names_the_terminator_and_is_dropped(reg) -> None:
    """Tetragon's cve-2023-2640 example writes "security.capability\\0": with Equal that is the string up to
    its terminator; with Prefix it would mean the whole string, which the author must write as Equal."""
    text = SYSCALL.replace('"/etc/shadow"', '"/etc/shadow\\0"')
    [p] = validate_policies(text, "p.yaml", reg)
    [m] = p.sections[0].items[0].selectors[0].matchArgs
    assert (m.operator, m.values) == ("Equal", ["/etc/shadow"])
    assert refusal(text.replace("operator: Equal", "operator: Prefix"), reg) == (
        "p.yaml:14: spec.kprobes[0].selectors[0].matchArgs[0]: values[0]: a Prefix value ending in a NUL byte "
        "means the whole string; write it without the NUL with operator Equal")


def test_a_call_name_with_shell_characters_is_refused(reg) -> None:
    assert refusal(SYSCALL.replace("call: sys_openat", 'call: "sys_openat; rm -rf /"'), reg) == (
        "p.yaml:7: spec.kprobes[0].call: refused kprobes[0] sys_openat; rm -rf /: call 'sys_openat; rm -rf /' "
        "cannot name a kernel function or syscall (letters, digits and '_', with '.' suffixes such as .isra.0)")


def test_a_compiler_suffix_is_a_valid_call_name(reg) -> None:
    text = SYSCALL.replace("sys_openat", "tcp_v4_connect.isra.0").replace("syscall: true", "syscall: false")
    [p] = validate_policies(text, "p.yaml", reg)
    assert p.sections[0].items[0].call == "tcp_v4_connect.isra.0"


def test_a_list_reference_to_no_list_is_refused_by_name(reg) -> None:
    assert refusal(SYSCALL.replace("call: sys_openat", 'call: "list:syscalls"'), reg) == (
        "p.yaml:7: spec.kprobes[0].call: 'list:syscalls' names no list of spec.lists")


def test_a_32_bit_compat_syscall_is_refused(reg) -> None:
    assert refusal(SYSCALL.replace("sys_openat", "__ia32_sys_openat"), reg).endswith(
        "32-bit compat syscalls are not served (raw_tp sys_enter is filtered by 64-bit syscall numbers)")


def test_index_6_on_a_uprobe_is_refused(reg) -> None:
    text = SYSCALL.replace("  kprobes:\n  - call: sys_openat\n    syscall: true\n",
                           "  uprobes:\n  - path: /bin/bash\n    symbols: [readline]\n")
    assert refusal(text.replace("index: 1\n      type", "index: 6\n      type"), reg) == (
        "p.yaml:10: spec.uprobes[0].args[0].index: refused uprobes[0] /bin/bash: index 6: only the first 6 "
        "parameters (0..5, passed in registers) can be read")


def test_post_and_nopost_together_are_refused(reg) -> None:
    text = SYSCALL + "      matchActions:\n      - action: Post\n      - action: NoPost\n"
    assert refusal(text, reg).endswith(
        "spec.kprobes[0].selectors[0].matchActions: refused kprobes[0] sys_openat: Post and NoPost together")


def test_two_different_signals_in_one_selector_are_refused(reg) -> None:
    text = SYSCALL + "      matchActions:\n      - {action: Signal, argSig: 10}\n      - {action: Signal, argSig: 12}\n"
    assert refusal(text, reg).endswith("refused kprobes[0] sys_openat: two Signal actions with different argSig: "
                                       "one signal per selector")


def test_every_refused_hook_is_listed(reg) -> None:
    text = SYSCALL.replace("index: 1\n      type", "index: 7\n      type") + \
        "  - call: sys_write\n    args:\n    - {index: 9, type: int}\n"
    with pytest.raises(SourceError) as err:
        validate_policies(text, "p.yaml", reg)
    assert [(p.line, p.path) for p in err.value.problems] == [  # type: ignore[attr-defined]
        (10, "spec.kprobes[0].args[0].index"), (19, "spec.kprobes[1].args[0].index")]


def test_the_example_corpus_meets_the_rules(reg) -> None:
    """Tetragon's examples that parse are never refused by the rules (the trailing NUL of cve-2023-2640
    names the string's terminator and is accepted; isNamespaceCapability is served in the kernel)."""
    found = {}
    for f in C.corpus_files():
        try:
            policies = parse_policies(f.read_bytes(), C.rel(f), C.ModelSections())
        except SourceError:
            continue
        for p in policies:
            for pr in problems(p):
                found[C.rel(f)] = str(pr)
    assert found == {}


def test_policy_check_refuses_offline_what_add_refuses_on_every_kernel(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(SYSCALL.replace("index: 1\n      type", "index: 6\n      type"))
    res = CliRunner().invoke(cli, ["policy", "check", str(f)])
    assert res.exit_code == 1
    assert res.output == (f"Error: {f}:10: spec.kprobes[0].args[0].index: refused kprobes[0] sys_openat: index 6: "
                          "syscalls have 6 parameters (0..5)\n")


def test_policy_check_refuses_bad_bytes_with_the_parser_words(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_bytes(SYSCALL.encode() + b"# \xff\n")
    res = CliRunner().invoke(cli, ["policy", "check", str(f)])
    assert res.exit_code == 1 and res.output == f"Error: {f}:17: policy is not UTF-8 text (byte {len(SYSCALL) + 2})\n"


def test_a_match_on_an_undeclared_argument_is_refused(reg) -> None:
    text = SYSCALL.replace("      - index: 1\n        operator", "      - index: 3\n        operator")
    assert refusal(text, reg) == ("p.yaml:14: spec.kprobes[0].selectors[0].matchArgs[0].index: refused kprobes[0] "
                                  "sys_openat: index 3 names no declared argument (declared: [1])")


def test_a_tracepoint_match_names_an_argument_by_its_position(reg) -> None:
    text = SYSCALL.replace("  kprobes:\n  - call: sys_openat\n    syscall: true\n",
                           "  tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_openat\n")
    assert refusal(text, reg).endswith("refused tracepoints[0] syscalls/sys_enter_openat: index 1 names no declared "
                                       "argument (declared: [0])")


def test_a_kernel_structure_type_on_a_syscall_parameter_is_refused(reg) -> None:
    assert refusal(SYSCALL.replace("type: string", "type: dentry"), reg).endswith(
        "refused kprobes[0] sys_openat: type dentry is a kernel structure; a syscall parameter is a user value (use "
        "int, string, char_buf, fd, or sockaddr for the address passed to connect, bind or sendto)")


def test_a_size_argument_that_is_not_declared_is_refused(reg) -> None:
    text = SYSCALL.replace("type: string", "type: char_buf\n      sizeArgIndex: 3").split("    selectors:")[0]
    assert refusal(text, reg).endswith("spec.kprobes[0].args[0].sizeArgIndex: refused kprobes[0] sys_openat: "
                                       "sizeArgIndex 3 (parameter 2) must also be declared in args")


def test_a_type_uprobes_cannot_read_is_refused(reg) -> None:
    text = SYSCALL.replace("  kprobes:\n  - call: sys_openat\n    syscall: true\n",
                           "  uprobes:\n  - path: /bin/bash\n    symbols: [readline]\n").replace("type: string", "type: fd")
    assert refusal(text, reg).endswith("refused uprobes[0] /bin/bash: type fd is not supported for uprobes (integers: "
                                       "int, uint, s64, u64, size_t...; string; char_buf)")


def test_a_syscall_return_value_read_as_a_string_is_refused(reg) -> None:
    text = SYSCALL.replace("    syscall: true\n", "    syscall: true\n    return: true\n    returnArg: {index: 0, "
                                                  "type: string}\n")
    assert refusal(text, reg).endswith("spec.kprobes[0].returnArg.type: refused kprobes[0] sys_openat: returnArg type "
                                       "string: a syscall returns an integer")
