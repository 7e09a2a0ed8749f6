"""TracingPolicy documents: the limits, the shared models (args, selectors, actions, `HookSpec`) and parsing.

A policy's ``spec`` is composed from the sections installed sensors declare in `SensorSpec.policy_sections`
(each sensor keeps its section's model in its own ``schema.py``: ``kprobes`` in the kprobe sensor, and a
third-party sensor adds a section the same way); this module owns the models those sections share (so
Tetragon's YAML names mean the same in every sensor) and turns a YAML text into validated `Policy` objects
whose errors name file, line and field path (`sensorium.policy_errors`; named lists: `sensorium.policy_lists`;
field types: `sensorium.policy_fields`). Anything Tetragon knows but Sensorium does not implement is refused by name,
never ignored: unsupported fields, operators and actions each say what is supported instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sensorium.hookspecs import PolicyView
from sensorium.policy_errors import PolicyError, combine_problems, errors_from_pydantic, field_loc_of
from sensorium.policy_fields import PolicyModel, absent, max_bytes, max_items, one_of, refuse
from sensorium.policy_values import (
    ADDR_OPERATORS,
    CAPABILITIES,
    PORT_OPERATORS,
    PRIV_PORT_OPERATORS,
    SOCK_FAMILIES,
    SOCK_PROTOCOLS,
    sock_value,
)
from sensorium.yamlsrc import Located, SourceError, YamlLimits, format_path, load_documents

# --------------------------------------------------------------------------------------------------
# Limits: checked before anything is loaded; every message carries the limit.
# They size kernel maps and bound verifier work, so they are deliberately conservative.
# --------------------------------------------------------------------------------------------------

MAX_POLICY_BYTES = 1 << 20          # one policy file / API request body
MAX_DOCUMENTS = 64                  # YAML documents in one file
MAX_HOOKS_PER_POLICY = 256          # items over all sections of one policy, as written (a list: call is one)
MAX_SELECTORS_PER_HOOK = 5          # as Tetragon: selectors are ORed, each costs a program branch
MAX_ARGS_PER_HOOK = 6               # syscalls have six arguments
MAX_MATCH_ARGS_PER_SELECTOR = 6
MAX_FILTERS_PER_SELECTOR = 8        # entries of each other match* list in one selector
MAX_ACTIONS_PER_SELECTOR = 4
MAX_VALUES_PER_OPERATOR = 64        # values of one matchArgs/matchBinaries/... entry
MAX_STRING_VALUE_LEN = 255          # one string to compare in the kernel (bytes, without the NUL)
MAX_PATH_LEN = 4095                 # uprobe binary paths
MAX_MESSAGE_LEN = 256               # Tetragon: "a short message of 256 characters max"
MAX_TAGS = 16                       # Tetragon: MaxItems=16
MAX_TAG_LEN = 128
MAX_NAME_LEN = 253                  # DNS-1123 subdomain (metadata.name)
MAX_SYMBOLS_PER_UPROBE = 64
MAX_YAML_DEPTH = 32                 # nesting of YAML collections (a policy needs about 8)
MAX_POLICIES = 256                  # loaded at once; policy ids are 0..MAX_POLICIES-1
MAX_LISTS = 16                      # spec.lists of one policy
MAX_LIST_VALUES = 64                # names in one list

# How `sensorium.yamlsrc` reads a policy text (file, API request, CRD object). Anchors and aliases are
# refused outright: policies have no need for them, and an alias graph is how a few hundred bytes cost
# minutes. "\0" escapes in strings are read (Tetragon's examples use them); the rules say where they fit.
POLICY_LIMITS = YamlLimits(what="policy", whats="policies", max_bytes=MAX_POLICY_BYTES, max_depth=MAX_YAML_DEPTH,
                           max_aliases=0, max_nodes=200_000, max_documents=MAX_DOCUMENTS, nul_in_strings=True)

API_VERSIONS = ("sensorium.io/v1alpha1", "cilium.io/v1alpha1")
KINDS = ("TracingPolicy", "TracingPolicyNamespaced")
MODES = ("enforcement", "monitoring")

# --------------------------------------------------------------------------------------------------
# Vocabularies: what we implement, and what Tetragon has that we refuse by name.
# --------------------------------------------------------------------------------------------------

INT_ARG_TYPES = ("int", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                 "s8", "u8", "s16", "u16", "s32", "u32", "s64", "u64", "uint", "long", "ulong", "size_t")
# Kernel structures read field by field (sensorium.hooks.kstructs): kernel functions only.
KERNEL_STRUCT_TYPES = (
    "bpf_attr", "bpf_prog", "bpf_map", "perf_event", "user_namespace", "capability", "load_info", "module",
    "net_device", "kernel_cap_t", "cap_inheritable", "cap_permitted", "cap_effective",
)
ARG_TYPES = INT_ARG_TYPES + (
    "auto", "string", "char_buf", "fd", "file", "path", "dentry", "filename", "sock", "sockaddr", "skb",
    "cred", "linux_binprm", "syscall64", "nop",
) + KERNEL_STRUCT_TYPES
TETRAGON_ARG_TYPES_UNSUPPORTED = (
    "char_iovec", "kiocb", "iov_iter", "data_loc", "socket", "const_buf", "bpf_cmd",
)

ARG_OPERATORS = (
    "Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "GT", "LT", "GreaterThan", "LessThan",
    "Mask", "SAddr", "NotSAddr", "DAddr", "NotDAddr", "SPort", "NotSPort", "DPort", "NotDPort", "Protocol",
    "Family", "State", "SPortPriv", "NotSPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv", "InMap",
    "NotInMap",
)
TETRAGON_ARG_OPERATORS_UNSUPPORTED = (
    "CapabilitiesGained", "InRange", "NotInRange", "SubString", "SubStringIgnCase", "FileType", "NotFileType",
)
BINARY_OPERATORS = ("In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
SET_OPERATORS = ("In", "NotIn")
NAMESPACES = ("Uts", "Ipc", "Mnt", "Pid", "PidForChildren", "Net", "Time", "TimeForChildren", "Cgroup", "User")
CAPABILITY_SETS = ("Effective", "Inheritable", "Permitted")

ACTIONS = ("Post", "NoPost", "Sigkill", "Signal", "Override", "Set", "TrackSock", "UntrackSock", "GetUrl", "DnsLookup")
# Requests the agent makes when the selector matches (sensorium.actions): from the posted event, so never NoPost.
NOTIFY_ACTIONS = ("GetUrl", "DnsLookup")
# Socket tracking: the struct sock argument argSock is (un)bound to a process, whom later events on it report.
SOCK_TRACK_ACTIONS = ("TrackSock", "UntrackSock")
# Actions that change what the process can do: in monitoring mode they only report what they would do.
BLOCKING_ACTIONS = ("Sigkill", "Signal", "Override", "Set")
TETRAGON_ACTIONS_UNSUPPORTED = (
    "FollowFD", "UnfollowFD", "CopyFD", "NotifyEnforcer",
    "CleanupEnforcerNotification",
)
RATE_LIMIT_SCOPES = ("thread", "process", "global")
RETURN_ARG_ACTIONS = ("Post", "TrackSock", "UntrackSock")

# Spec keys Tetragon knows: which Sensorium sensor serves each (None: nothing does).
KNOWN_SECTION_OWNERS: Mapping[str, str | None] = {
    "kprobes": "kprobe", "tracepoints": "tracepoint", "uprobes": "uprobe", "lsmhooks": "lsm",
    "usdts": "usdt", "fentries": None,
}
# Host-level spec keys Tetragon knows that we do not implement, with why.
UNSUPPORTED_SPEC_KEYS: Mapping[str, str] = {
    "enforcers": "enforcers (NotifyEnforcer) are not supported: Tetragon's enforcer makes the listed syscalls fail "
                 "through fmod_ret or bpf_override_return on their __x64_sys_ wrappers, which the kernel allows only "
                 "with an error-injection list (CONFIG_FUNCTION_ERROR_INJECTION), absent from every kernel we test "
                 "(docs/policies.md); use a Sigkill action, or an lsmhooks section",
    "loader": "loader events are not supported",
    "selectorsMacros": "selector macros are not supported; write the selectors out",
}
POLICY_OPTIONS = {"policy-mode": {"enforce": "enforcement", "enforcement": "enforcement",
                                  "monitor": "monitoring", "monitoring": "monitoring"}}

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RATE_LIMIT = re.compile(r"^([0-9]+)([smh]?)$")

MatchValue = Annotated[str, max_bytes(MAX_STRING_VALUE_LEN, "value", numbers=True)]
Message = Annotated[str, max_bytes(MAX_MESSAGE_LEN, "message")]
Tag = Annotated[str, max_bytes(MAX_TAG_LEN, "tag")]
Values = Annotated[list[MatchValue], max_items(MAX_VALUES_PER_OPERATOR, "values")]
Tags = Annotated[list[Tag], max_items(MAX_TAGS, "tags")]


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


class ArgSpec(PolicyModel):
    """One argument to read and report (Tetragon's KProbeArg).

    ``index``: the argument's position in the hook (kprobe/uprobe/lsm: function argument; tracepoint:
    field of the tracepoint's format, see the tracepoint sensor). ``type`` says how to read it.
    """

    index: int = Field(ge=0, le=31)
    type: Annotated[str, one_of("argument type", ARG_TYPES, TETRAGON_ARG_TYPES_UNSUPPORTED)] = "auto"
    label: Annotated[str, max_bytes(64, "label")] | None = None
    sizeArgIndex: int | None = Field(default=None, ge=0, le=31,
                                     description="char_buf: the argument holding the size (Tetragon counts from 1)")
    returnCopy: bool = False
    maxData: bool = False
    resolve: Annotated[Any, refuse("'resolve' (following struct fields from an argument) is not implemented")] = (
        absent())
    btfType: Annotated[Any, refuse("'btfType' is not implemented")] = absent()

    @model_validator(mode="after")
    def _char_buf_only(self) -> ArgSpec:
        if (self.sizeArgIndex is not None or self.returnCopy or self.maxData) and self.type != "char_buf":
            raise PydanticCustomError("policy_value",
                                      "sizeArgIndex, returnCopy and maxData apply only to type char_buf")
        if self.maxData:
            # No sensor reads the larger buffer yet; accepting it would silently read less than asked.
            raise PydanticCustomError("policy_unsupported", "maxData is not supported by Sensorium yet: char_buf "
                                      "arguments are read up to the sensor's fixed buffer size")
        return self


# --------------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------------


class MatchArg(PolicyModel):
    """Compare one argument (``index``, or several with ``args``) against ``values`` with ``operator``."""

    index: int | None = Field(default=None, ge=0, le=31)
    args: list[Annotated[int, Field(ge=0, le=31)]] | None = None
    operator: Annotated[str, one_of("matchArgs operator", ARG_OPERATORS, TETRAGON_ARG_OPERATORS_UNSUPPORTED)]
    values: Values = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_target(self) -> MatchArg:
        if (self.index is None) == (self.args is None):
            raise PydanticCustomError("policy_value", "give exactly one of 'index' and 'args'")
        if self.operator in PRIV_PORT_OPERATORS:
            if self.values:
                raise PydanticCustomError("policy_value", "operator {op} takes no values (it means ports 0:1023)",
                                          {"op": self.operator})
            return self
        if not self.values:
            raise PydanticCustomError("policy_value", "values must not be empty")
        if any(v.endswith("\0") for v in self.values):
            object.__setattr__(self, "values", self._without_terminator())
        if self.operator in ADDR_OPERATORS + PORT_OPERATORS + ("Protocol", "Family", "State"):
            for i, v in enumerate(self.values):
                try:
                    sock_value(self.operator, v)
                except ValueError as e:
                    raise PydanticCustomError("policy_value", "values[{i}]: {why}", {"i": i, "why": str(e)}) from None
        if self.operator in ("GT", "LT", "GreaterThan", "LessThan") and len(self.values) != 1:
            raise PydanticCustomError("policy_value", "operator {op} takes exactly one value", {"op": self.operator})
        return self

    def _without_terminator(self) -> list[str]:
        """Values naming a string's terminating NUL ("security.capability\\0", as in Tetragon's cve-2023-2640
        example) mean the string up to it: for Equal and Postfix (and their Not forms) the NUL is dropped,
        which keeps the meaning for every consumer (kernel selectors and user-space matchers alike); for
        Prefix it would mean the whole string, so the author is told to write Equal. Any other NUL stays and
        is refused by the selector rules."""
        out: list[str] = []
        for i, v in enumerate(self.values):
            if v.endswith("\0") and "\0" not in v[:-1]:
                if self.operator not in ("Equal", "NotEqual", "Postfix", "NotPostfix"):
                    raise PydanticCustomError(
                        "policy_value", "values[{i}]: a {op} value ending in a NUL byte means the whole string; "
                        "write it without the NUL with operator {eq}",
                        {"i": i, "op": self.operator, "eq": "NotEqual" if self.operator.startswith("Not") else "Equal"})
                out.append(v[:-1])
            else:
                out.append(v)
        return out

    @property
    def indexes(self) -> list[int]:
        return [self.index] if self.index is not None else list(self.args or [])

    @property
    def op(self) -> str:
        """The operator with Tetragon's aliases folded (GreaterThan -> GT, LessThan -> LT; InMap/NotInMap, set
        membership, -> Equal/NotEqual, which compare against every value)."""
        operator: str = self.operator
        return {"GreaterThan": "GT", "LessThan": "LT", "InMap": "Equal", "NotInMap": "NotEqual"}.get(operator, operator)


class MatchBinaries(PolicyModel):
    """The executable of the current process (its full path) against ``values``."""

    operator: Annotated[str, one_of("matchBinaries operator", BINARY_OPERATORS)]
    values: Values
    followChildren: bool = False

    @model_validator(mode="after")
    def _non_empty(self) -> MatchBinaries:
        if not self.values:
            raise PydanticCustomError("policy_value", "values must not be empty")
        return self


class MatchPIDs(PolicyModel):
    operator: Annotated[str, one_of("matchPIDs operator", SET_OPERATORS)]
    values: Annotated[list[Annotated[int, Field(ge=0, le=4_294_967_295)]],
                      max_items(MAX_VALUES_PER_OPERATOR, "values")]
    isNamespacePID: bool = False
    followForks: bool = False

    @model_validator(mode="after")
    def _non_empty(self) -> MatchPIDs:
        # An empty In matches nothing and an empty NotIn everything: neither is what the author meant.
        if not self.values:
            raise PydanticCustomError("policy_value", "values must not be empty")
        return self


class MatchNamespaces(PolicyModel):
    """Namespace inode numbers (or ``host_ns``: the agent's own) of one namespace type."""

    namespace: Annotated[str, one_of("namespace", NAMESPACES)]
    operator: Annotated[str, one_of("matchNamespaces operator", SET_OPERATORS)]
    values: Values

    @model_validator(mode="after")
    def _values(self) -> MatchNamespaces:
        if not self.values:
            raise PydanticCustomError("policy_value", "values must not be empty")
        for v in self.values:
            if v != "host_ns" and not v.isdigit():
                raise PydanticCustomError("policy_value", "namespace value '{v}' is neither a number nor host_ns",
                                          {"v": v})
        return self


class MatchCapabilities(PolicyModel):
    type: Annotated[str, one_of("capability set", CAPABILITY_SETS)] = "Effective"
    operator: Annotated[str, one_of("matchCapabilities operator", SET_OPERATORS)]
    isNamespaceCapability: bool = False
    values: Values

    @model_validator(mode="after")
    def _names(self) -> MatchCapabilities:
        if not self.values:
            raise PydanticCustomError("policy_value", "values must not be empty")
        for v in self.values:
            if v.upper() not in CAPABILITIES:
                raise PydanticCustomError("policy_value", "unknown capability '{v}'", {"v": v})
        return self


# Sections whose events are a Tetragon message without kernel_stack_trace/user_stack_trace (only ProcessKprobe
# has them): a Post with stack traces there is exported only in the extended format (Policy.warnings says so).
_NO_STACK_FIELDS = {"tracepoints": "process_tracepoint", "uprobes": "process_uprobe", "lsmhooks": "process_lsm",
                    "usdts": "process_usdt"}


class MatchAction(PolicyModel):
    """What to do when the selector matches. ``Post`` is the default when a selector has no actions."""

    action: Annotated[str, one_of("action", ACTIONS, TETRAGON_ACTIONS_UNSUPPORTED)]
    argSig: int | None = Field(default=None, ge=1, le=64, description="Signal: the signal number")
    argError: int | None = Field(default=None, ge=-4095, le=4095, description="Override: errno to return (negative)")
    rateLimit: str | None = Field(default=None,
                                  description="Post: at most one event per period ('10', '5s', '1m', '1h')")
    rateLimitScope: Annotated[str, one_of("rateLimitScope", RATE_LIMIT_SCOPES)] | None = None
    argIndex: int | None = Field(default=None, ge=0, le=31,
                                 description="Set (usdts): the position in args of the argument to overwrite")
    argValue: int | None = Field(default=None, ge=-(1 << 31), le=(1 << 32) - 1,
                                 description="Set (usdts): the 4-byte value written over the argument")
    argFd: Annotated[Any, refuse("argFd belongs to FollowFD/CopyFD actions, which are not implemented")] = absent()
    argName: Annotated[Any, refuse("argName belongs to FollowFD/CopyFD actions, which are not implemented")] = absent()
    argUrl: str | None = Field(default=None, description="GetUrl: the http:// or https:// URL the agent requests")
    argFqdn: str | None = Field(default=None, description="DnsLookup: the name the agent looks up (an A query)")
    argSock: int | None = Field(default=None, ge=0, le=5,
                                description="TrackSock/UntrackSock: the position in args of the sock argument (0)")
    kernelStackTrace: bool | None = Field(default=None, description="Post: the event carries the kernel stack "
                                                                   "(kernel_stack_trace)")
    userStackTrace: bool | None = Field(default=None, description="Post: the event carries the user stack "
                                                                 "(user_stack_trace)")
    imaHash: Annotated[Any, refuse("IMA hashes are not implemented")] = absent()

    @field_validator("argUrl")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        from sensorium.actions import check_url

        why = check_url(v) if v is not None else None
        if why:
            raise PydanticCustomError("policy_value", "{why}", {"why": why})
        return v

    @field_validator("argFqdn")
    @classmethod
    def _fqdn(cls, v: str | None) -> str | None:
        from sensorium.actions import check_fqdn

        why = check_fqdn(v) if v is not None else None
        if why:
            raise PydanticCustomError("policy_value", "{why}", {"why": why})
        return v

    @model_validator(mode="after")
    def _fields_fit_action(self) -> MatchAction:
        a = self.action
        if self.argSock is not None and a not in SOCK_TRACK_ACTIONS:
            raise PydanticCustomError("policy_value", "argSock applies only to the TrackSock and UntrackSock actions")
        if self.argSig is not None and a != "Signal":
            raise PydanticCustomError("policy_value", "argSig applies only to the Signal action")
        if a == "Signal" and self.argSig is None:
            raise PydanticCustomError("policy_value", "the Signal action needs argSig (the signal number)")
        if (self.argIndex is not None or self.argValue is not None) and a != "Set":
            raise PydanticCustomError("policy_value", "argIndex and argValue apply only to the Set action")
        if a == "Set" and self.argValue is None:
            raise PydanticCustomError("policy_value", "the Set action needs argValue (the value to write)")
        if self.argUrl is not None and a != "GetUrl":
            raise PydanticCustomError("policy_value", "argUrl applies only to the GetUrl action")
        if self.argFqdn is not None and a != "DnsLookup":
            raise PydanticCustomError("policy_value", "argFqdn applies only to the DnsLookup action")
        if a == "GetUrl" and self.argUrl is None:
            raise PydanticCustomError("policy_value", "the GetUrl action needs argUrl (the URL to request)")
        if a == "DnsLookup" and self.argFqdn is None:
            raise PydanticCustomError("policy_value", "the DnsLookup action needs argFqdn (the name to look up)")
        if a == "Override" and self.argError is None:
            raise PydanticCustomError("policy_value", "the Override action needs argError (e.g. -1 for EPERM)")
        if (self.rateLimit is not None or self.rateLimitScope is not None) and a != "Post":
            raise PydanticCustomError("policy_value", "rateLimit and rateLimitScope apply only to the Post action")
        if self.rateLimitScope is not None and self.rateLimit is None:
            raise PydanticCustomError("policy_value", "rateLimitScope needs rateLimit")
        if self.rateLimit is not None:
            m = _RATE_LIMIT.match(str(self.rateLimit))
            if not m or int(m.group(1)) == 0:
                raise PydanticCustomError("policy_value",
                                          "rateLimit '{v}' is not a period like '10', '10s', '5m' or '1h'",
                                          {"v": self.rateLimit})
        return self

    @property
    def rate_limit_ns(self) -> int | None:
        """``rateLimit`` in nanoseconds (None when unset)."""
        if self.rateLimit is None:
            return None
        m = _RATE_LIMIT.match(str(self.rateLimit))
        assert m is not None  # validated above
        return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)] * 1_000_000_000

    @property
    def blocking(self) -> bool:
        return self.action in BLOCKING_ACTIONS


class Selector(PolicyModel):
    """One selector: every filter inside must match (AND); the hook's selectors are ORed.

    A hook without selectors posts every call. A selector without matchActions posts (``Post``).
    """

    matchArgs: Annotated[list[MatchArg], max_items(MAX_MATCH_ARGS_PER_SELECTOR, "matchArgs entries")] = (
        Field(default_factory=list))
    matchReturnArgs: Annotated[list[MatchArg], max_items(MAX_MATCH_ARGS_PER_SELECTOR, "matchReturnArgs entries")] = (
        Field(default_factory=list))
    matchBinaries: Annotated[list[MatchBinaries], max_items(MAX_FILTERS_PER_SELECTOR, "matchBinaries entries")] = (
        Field(default_factory=list))
    matchPIDs: Annotated[list[MatchPIDs], max_items(MAX_FILTERS_PER_SELECTOR, "matchPIDs entries")] = (
        Field(default_factory=list))
    matchNamespaces: Annotated[list[MatchNamespaces],
                               max_items(MAX_FILTERS_PER_SELECTOR, "matchNamespaces entries")] = (
        Field(default_factory=list))
    matchCapabilities: Annotated[list[MatchCapabilities],
                                 max_items(MAX_FILTERS_PER_SELECTOR, "matchCapabilities entries")] = (
        Field(default_factory=list))
    matchActions: Annotated[list[MatchAction], max_items(MAX_ACTIONS_PER_SELECTOR, "matchActions entries")] = (
        Field(default_factory=list))
    matchReturnActions: Annotated[list[MatchAction],
                                  max_items(MAX_ACTIONS_PER_SELECTOR, "matchReturnActions entries")] = (
        Field(default_factory=list))
    matchNamespaceChanges: Annotated[Any, refuse("matchNamespaceChanges is not implemented")] = absent()
    matchCapabilityChanges: Annotated[list[MatchCapabilities],
                                      max_items(MAX_FILTERS_PER_SELECTOR, "matchCapabilityChanges entries")] = (
        Field(default_factory=list))

    @property
    def actions(self) -> list[MatchAction]:
        """The actions to run on a match (``Post`` when none are written)."""
        return list(self.matchActions) or [MatchAction(action="Post")]


Selectors = Annotated[list[Selector], max_items(MAX_SELECTORS_PER_HOOK, "selectors")]
Args = Annotated[list[ArgSpec], max_items(MAX_ARGS_PER_HOOK, "args")]


class HookSpec(PolicyModel):
    """Fields every hook section item shares: the base of a sensor's section model (its ``schema.py``).

    A subclass adds the fields naming what it hooks and overrides `describe`; it may override `target` and
    `rules` (the checks that need no kernel, run by `sensorium.policy_rules` for ``policy check`` and
    ``policy add`` alike)."""

    SECTION: ClassVar[str] = ""
    args: Args = Field(default_factory=list)
    selectors: Selectors = Field(default_factory=list)
    message: Message | None = None
    tags: Tags = Field(default_factory=list)
    data: Annotated[Any, refuse("'data' (extra data fields) is not implemented")] = absent()
    # The written item a "list:NAME" call was expanded from (its index in the section as written; None: written
    # out). The items of one list share args and selectors: a sensor may serve them with one program
    # (`sensorium.hooks.syscalls.merge_syscall_sets`). Set by parsing, never by the document.
    _from_list: int | None = PrivateAttr(default=None)

    @property
    def from_list(self) -> int | None:
        return self._from_list

    @model_validator(mode="after")
    def _return_selectors_need_return(self) -> HookSpec:
        returns = bool(getattr(self, "return_", False))
        for s in self.selectors:
            if (s.matchReturnArgs or s.matchReturnActions) and not returns:
                raise PydanticCustomError("policy_value",
                                          "matchReturnArgs/matchReturnActions need 'return: true' on the hook")
        for a in self.args:
            if a.returnCopy and not returns:
                raise PydanticCustomError("policy_value", "returnCopy needs 'return: true' on the hook")
        return self

    @property
    def blocking(self) -> bool:
        """Whether any selector can block (Sigkill, Signal, Override)."""
        return any(a.blocking for s in self.selectors for a in (*s.actions, *s.matchReturnActions))

    def describe(self) -> str:  # pragma: no cover - overridden
        """The hook in a few words (``sys_openat``, ``syscalls/sys_enter_openat``): status, load errors."""
        return self.SECTION

    def target(self) -> str:
        """What a refusal names after ``section[index]`` (by default `describe`)."""
        return self.describe()

    def rules(self) -> Sequence[tuple[str, str]]:
        """What no kernel lets the sensor serve, known without a kernel: ``(field relative to the item,
        reason)``, first problem first (one is reported per hook). The default finds nothing: the sensor
        refuses while planning a load."""
        return ()


# --------------------------------------------------------------------------------------------------
# Document envelope
# --------------------------------------------------------------------------------------------------


class LabelSelectorRequirement(PolicyModel):
    key: str
    operator: Annotated[str, one_of("matchExpressions operator", ("In", "NotIn", "Exists", "DoesNotExist"))]
    values: list[str] = Field(default_factory=list)


class LabelSelector(PolicyModel):
    """Kubernetes LabelSelector (podSelector, containerSelector)."""

    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class OptionSpec(PolicyModel):
    name: str
    value: str = ""


class Metadata(BaseModel):
    # Kubernetes object metadata: the rest of ObjectMeta (uid, resourceVersion...) is bookkeeping that a
    # CRD round trip adds; it never changes behaviour, so it is allowed and kept, not refused.
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Section:
    """One spec section of a policy: the sensor that owns it and its validated items."""

    key: str
    sensor: str
    items: tuple[BaseModel, ...]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A validated TracingPolicy document, split by section."""

    name: str
    kind: str
    api_version: str
    namespace: str | None
    sections: tuple[Section, ...]
    mode: str = "enforcement"
    pod_selector: LabelSelector | None = None
    container_selector: LabelSelector | None = None
    host_selector: bool = False  # hostSelector: {} (the host's processes, outside every pod)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    file: str | None = None
    line: int | None = None
    source: Located | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def sensors(self) -> list[str]:
        return [s.sensor for s in self.sections]

    @property
    def scoped(self) -> bool:
        """Whether the policy is bounded to pods and/or the host (else it applies host-wide)."""
        return (self.pod_selector is not None or self.container_selector is not None or self.host_selector
                or self.kind == "TracingPolicyNamespaced")

    @property
    def key(self) -> str:
        """How the agent names it: ``namespace/name`` for a TracingPolicyNamespaced, else ``name``."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def view(self, section: Section, policy_id: int, mode: str | None = None, scope: Any = None) -> PolicyView:
        """The `PolicyView` a sensor receives for ``section`` (``scope``: a `sensorium.hookspecs.Scope`)."""
        return PolicyView(id=policy_id, name=self.name, namespace=self.namespace, section=section.key,
                          items=section.items, mode=mode or self.mode, scope=scope)

    @property
    def warnings(self) -> list[str]:
        """What the policy gives that has no effect, as Tetragon accepts and ignores it (``argError`` on an
        action other than Override): ``file:line: field: what is ignored``, for `policy check` to print and
        the agent to log and list. Never a reason to refuse the policy."""
        out: list[str] = []
        for sec in self.sections:
            for i, item in enumerate(sec.items):
                for si, sel in enumerate(getattr(item, "selectors", None) or ()):
                    for ai, act in enumerate(getattr(sel, "matchActions", None) or ()):
                        base = ("spec", sec.key, i, "selectors", si, "matchActions", ai)
                        if getattr(act, "argError", None) is not None and act.action != "Override":
                            out.append(self._warning(base + ("argError",), f"argError has no effect with the "
                                       f"{act.action} action (only Override returns an error): ignored"))
                        for field in ("kernelStackTrace", "userStackTrace"):
                            if not getattr(act, field, None):
                                continue
                            if act.action != "Post":
                                out.append(self._warning(base + (field,), f"{field} has no effect with the "
                                           f"{act.action} action (only Post takes stack traces): ignored"))
                            elif sec.key in _NO_STACK_FIELDS:
                                out.append(self._warning(base + (field,), f"Tetragon's {_NO_STACK_FIELDS[sec.key]} "
                                           "event has no stack trace fields: the stacks are exported only with "
                                           "events.format: extended"))
        return out

    def _warning(self, loc: tuple[Any, ...], what: str) -> str:
        line = self.source.line_of(loc) if self.source else None
        where = ":".join(str(x) for x in (self.file, line) if x is not None)
        return f"{where + ': ' if where else ''}{format_path(loc)}: {what}"

    @property
    def scope_requirement(self) -> str | None:
        """What loading a scoped policy needs, for ``policy check`` to print as a warning (the check validates
        the policy; whether an agent can serve its scope is the agent's): ``file:line: field: ...``; None for a
        host-wide policy. An agent without Kubernetes refuses it at load (`PolicyManager`)."""
        if not self.scoped:
            return None
        what, loc = (("kind TracingPolicyNamespaced", ("kind",)) if self.kind == "TracingPolicyNamespaced" else
                     ("podSelector", ("spec", "podSelector")) if self.pod_selector is not None else
                     ("containerSelector", ("spec", "containerSelector")) if self.container_selector is not None
                     else ("hostSelector", ("spec", "hostSelector")))
        return self._warning(loc, f"the policy is scoped by {what}: loading it needs an agent with its Kubernetes "
                                  "support (kubernetes.enabled in the agent config); an agent without it refuses the "
                                  "policy")

    def hook_line(self, section: str, index: int) -> int | None:
        """Line of ``spec.<section>[index]`` in the source, for error messages."""
        return self.source.line_of(("spec", section, index)) if self.source else None


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


class SectionRegistry:
    """What parsing needs from the plugin registry (`sensorium.plugins.PluginRegistry` has it)."""

    def policy_sections(self) -> Mapping[str, tuple[str, Any]]:  # pragma: no cover - protocol
        raise NotImplementedError


def _known_owner_hint(key: str, registry: Any) -> str:
    owner = KNOWN_SECTION_OWNERS.get(key, "?")
    if owner is None:
        return f"no Sensorium sensor implements {key!r}"
    if owner == "?":
        return "no installed sensor declares this section"
    rec = registry.record("sensor", owner) if hasattr(registry, "record") else None
    if rec is None:
        return f"the {owner!r} sensor would serve it, but it is not installed"
    state = rec.state + (f": {rec.reason}" if rec.reason else "")
    return f"the {owner!r} sensor would serve it, but it is {state}"


def _validate_document(doc: Located, registry: Any, scoping_supported: bool) -> Policy:
    data = doc.data
    err = doc.error
    if not isinstance(data, dict):
        raise err((), "a policy document must be a mapping")
    for key in data:
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            raise err((key,), "unknown top-level field (expected apiVersion, kind, metadata, spec)")
    api = data.get("apiVersion")
    if api not in API_VERSIONS:
        raise err(("apiVersion",), f"apiVersion {api!r} is not supported (supported: {', '.join(API_VERSIONS)})")
    kind = data.get("kind")
    if kind not in KINDS:
        raise err(("kind",), f"kind {kind!r} is not supported (supported: {', '.join(KINDS)})")
    raw_meta = data.get("metadata")
    if not isinstance(raw_meta, dict):
        raise err(("metadata",), "metadata (a mapping with 'name') is required")
    try:
        meta = Metadata.model_validate(raw_meta)
    except ValidationError as exc:
        raise errors_from_pydantic(exc, doc, ("metadata",), Metadata) from None
    name = meta.name
    if len(name) > MAX_NAME_LEN or not _DNS1123_SUBDOMAIN.match(name):
        raise err(("metadata", "name"),
                  f"{name!r} is not a valid name: lower case letters, digits, '-' and '.', "
                  f"starting and ending with a letter or digit, at most {MAX_NAME_LEN} characters")
    namespace = meta.namespace
    if kind == "TracingPolicy" and namespace is not None:
        raise err(("metadata", "namespace"), "a cluster-wide TracingPolicy has no namespace "
                                             "(use kind TracingPolicyNamespaced)")
    if kind == "TracingPolicyNamespaced":
        if not namespace:
            raise err(("metadata",), "a TracingPolicyNamespaced needs metadata.namespace")
        if len(namespace) > 63 or not _DNS1123_LABEL.match(namespace):
            raise err(("metadata", "namespace"), f"{namespace!r} is not a valid namespace name")

    spec = data.get("spec")
    if not isinstance(spec, dict):
        raise err(("spec",), "spec (a mapping) is required")
    owned = registry.policy_sections()
    from sensorium.policy_lists import expand_lists, mentions_list, parse_lists  # (it imports this module)

    lists = parse_lists(spec.get("lists"), doc) if "lists" in spec else {}
    listed: Mapping[str, list[int | None]] = {}
    if lists or any(mentions_list(v) for v in spec.values()):
        spec, listed = expand_lists(spec, lists, doc)
    mode = "enforcement"
    pod_sel = cont_sel = None
    host_sel = False
    sections: list[Section] = []
    problems: list[SourceError] = []
    total = 0
    for key, value in spec.items():
        loc = ("spec", key)
        try:
            if key in owned:
                sensor, model = owned[key]
                if value is None:
                    continue
                if not isinstance(value, list):
                    raise err(loc, "must be a list")
                # A hook is an item as written: the syscalls of one "list:" call are one hook (one program)
                origins = listed.get(key) or [None] * len(value)
                hooks = sum(o is None for o in origins) + len({o for o in origins if o is not None})
                if total + hooks > MAX_HOOKS_PER_POLICY:  # before validating thousands of items
                    raise err(loc, f"{total + hooks} hooks in one policy; the limit is {MAX_HOOKS_PER_POLICY}")
                items = []
                for i, raw in enumerate(value):
                    try:
                        item = model.model_validate(raw)
                    except ValidationError as exc:
                        problems.extend(errors_from_pydantic(exc, doc, loc + (i,), model).problems)
                        continue
                    if isinstance(item, HookSpec) and i < len(origins):
                        item._from_list = origins[i]
                    items.append(item)
                total += hooks
                sections.append(Section(key=key, sensor=sensor, items=tuple(items)))
            elif key == "lists":
                continue  # expanded above
            elif key == "options":
                mode = _parse_options(value, doc)
            elif key in ("podSelector", "containerSelector"):
                try:
                    sel = LabelSelector.model_validate(value)
                except ValidationError as exc:
                    raise errors_from_pydantic(exc, doc, loc, LabelSelector) from None
                from sensorium.k8s.scope import LabelSelector as _Selector  # the matcher's own rules

                try:
                    _Selector.parse(value, f"spec.{key}")
                except ValueError as exc:
                    where, _, why = str(exc).partition(": ")
                    raise err(field_loc_of(where), why) from None
                if not scoping_supported:
                    raise err(loc, f"{key} is not served by this agent: scoping policies to pods needs "
                                   "its Kubernetes support (kubernetes.enabled in the agent config); remove it "
                                   "to apply the policy to the whole host")
                if key == "podSelector":
                    pod_sel = sel
                else:
                    cont_sel = sel
            elif key == "hostSelector":
                # As in Tetragon: only the empty selector ({}: the host's processes) or null (unset);
                # hosts carry no labels to select on.
                if value is not None and value != {}:
                    raise err(loc, "hostSelector must be {} (the host's processes, outside every pod) or null; "
                                   "selecting hosts by labels is not supported")
                if value == {} and not scoping_supported:
                    raise err(loc, "hostSelector is not supported without the Kubernetes support (it tells "
                                   "the host's processes from the pods'); remove it to apply the policy to the "
                                   "whole host")
                host_sel = value == {}
            elif key in UNSUPPORTED_SPEC_KEYS:
                raise err(loc, f"not supported by Sensorium: {UNSUPPORTED_SPEC_KEYS[key]}")
            else:
                raise err(loc, f"unknown policy section {key!r}: {_known_owner_hint(key, registry)} "
                               f"(sections served here: {', '.join(sorted(owned)) or 'none'})")
        except SourceError as exc:
            problems.extend(exc.problems if isinstance(exc, PolicyError) and exc.problems else [exc])
    if problems:
        raise combine_problems(problems, doc.file)
    if kind == "TracingPolicyNamespaced" and not scoping_supported:
        raise err(("kind",), "TracingPolicyNamespaced is not served by this agent: scoping policies to a "
                             "namespace needs its Kubernetes support (kubernetes.enabled in the agent config); use "
                             "kind TracingPolicy to apply it to the whole host")
    if not sections or not any(s.items for s in sections):
        raise err(("spec",), "the policy has no hooks (give at least one of: "
                             f"{', '.join(sorted(owned)) or 'none installed'})")
    return Policy(name=name, kind=kind, api_version=api, namespace=namespace, sections=tuple(sections), mode=mode,
                  pod_selector=pod_sel, container_selector=cont_sel, host_selector=host_sel,
                  labels=dict(meta.labels),
                  annotations=dict(meta.annotations), file=doc.file, line=doc.line_of(()), source=doc)


def _parse_options(value: Any, doc: Located) -> str:
    loc = ("spec", "options")
    if not isinstance(value, list):
        raise doc.error(loc, "must be a list of {name, value}")
    mode = "enforcement"
    for i, raw in enumerate(value):
        try:
            opt = OptionSpec.model_validate(raw)
        except ValidationError as exc:
            raise errors_from_pydantic(exc, doc, loc + (i,), OptionSpec) from None
        if opt.name not in POLICY_OPTIONS:
            raise doc.error(loc + (i, "name"), f"option {opt.name!r} is not supported (supported: "
                                               f"{', '.join(POLICY_OPTIONS)})")
        choices = POLICY_OPTIONS[opt.name]
        if opt.value not in choices:
            raise doc.error(loc + (i, "value"), f"{opt.name} {opt.value!r} is not one of {', '.join(choices)}")
        mode = choices[opt.value]
    return mode


def parse_policies(text: str | bytes, file: str | None, registry: Any, *,
                   scoping_supported: bool = False) -> list[Policy]:
    """Every policy in a (multi-document) YAML text, validated against the sections ``registry`` serves.

    Raises `SourceError` (usually a `PolicyError`) naming file, line and field path. Nothing is loaded here.
    """
    docs = load_documents(text, file, POLICY_LIMITS)
    if not docs:
        raise PolicyError("no policy document found", file=file)
    policies = [_validate_document(d, registry, scoping_supported) for d in docs]
    seen: dict[str, Policy] = {}
    for p in policies:
        if p.name in seen:
            raise PolicyError(f"policy name {p.name!r} appears twice in this file (first at line {seen[p.name].line})",
                              file=file, line=p.source.line_of(("metadata", "name")) if p.source else None,
                              path="metadata.name")
        seen[p.name] = p
    return policies


def parse_policy(text: str | bytes, file: str | None, registry: Any, *, scoping_supported: bool = False) -> Policy:
    """Exactly one policy from ``text`` (see `parse_policies`)."""
    policies = parse_policies(text, file, registry, scoping_supported=scoping_supported)
    if len(policies) != 1:
        raise PolicyError(f"expected one policy document, found {len(policies)}", file=file)
    return policies[0]


def installed_sections() -> Mapping[str, tuple[str, type[BaseModel]]]:
    """``{spec key: (sensor, item model)}`` of every installed sensor plugin (entry points, no allowlist):
    for tools that read policies without an agent (the compatibility table, the hostile corpus)."""
    from sensorium.plugins import PluginRegistry

    return dict(PluginRegistry().discover().policy_sections())


def __getattr__(name: str) -> Any:
    # SECTION_MODELS: the section models of the installed sensors, composed through the plugin registry
    # (this module names no sensor); computed when first asked for, never at import.
    if name == "SECTION_MODELS":
        models = {key: model for key, (_sensor, model) in installed_sections().items()}
        globals()["SECTION_MODELS"] = models
        return models
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArgSpec", "MatchArg", "MatchBinaries", "MatchPIDs", "MatchNamespaces", "MatchCapabilities", "MatchAction",
    "Selector", "HookSpec", "PolicyModel", "LabelSelector", "Policy", "Section", "PolicyError", "parse_policy",
    "parse_policies", "installed_sections", "CAPABILITIES", "SOCK_FAMILIES", "SOCK_PROTOCOLS", "sock_value",
    "combine_problems", "POLICY_LIMITS",
]
