"""node/ has one error tree, drawn in node/errors.py; lower layers are translated into it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

import pytest

import node
from ledger.errors import InsufficientFunds, LedgerCorrupt, LedgerError, ReceiptRefused
from node import errors
from node.errors import (
    CacheError,
    ConfigError,
    HostError,
    InvalidInput,
    JobFailed,
    LedgerFailed,
    LedgerRefused,
    NodeError,
    PaymentRefused,
    ProtocolViolation,
    RemoteError,
    SandboxError,
    UserError,
    translate,
    translated,
)
from protocol.errors import BadSignature, InvalidMessage
from scheduler.errors import FilterError
from tests.errortree import drawn, tree_problems

OUTSIDE = {
    # stdlib-only: runs inside the tier B sandbox under `python -I -S`, cannot import node
    "node.provider.sandbox.landlock.LandlockUnsupported",
}


def _node_errors() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(node.__path__, "node."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__.split(".")[0] == "node"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_node_error_is_local_or_remote_and_defined_in_errors_py() -> None:
    found = _node_errors()
    assert "node.errors.PeerRefused" in found and "node.errors.Busy" in found
    for name, cls in found.items():
        if name in OUTSIDE or cls in (NodeError, UserError, RemoteError):
            continue
        assert issubclass(cls, UserError | RemoteError), f"{name} is neither local nor remote"
        assert cls.__module__ == "node.errors", f"{name}: define it in node/errors.py"
    assert set(OUTSIDE) <= set(found)


def test_the_docstring_tree_names_every_class_and_only_those() -> None:
    assert tree_problems(errors) == []
    tree = drawn(errors)
    assert tree["NodeError"] is None
    assert tree["UserError"] == tree["RemoteError"] == "NodeError"
    assert tree["SandboxError"] == "HostError" and tree["HostError"] == "UserError"


def test_old_homes_of_moved_classes_still_export_them() -> None:
    from node.api.values import RemoteFunctionError
    from node.net.transfer import TransferFailed, TransferTimeout
    from node.provider.admission import Busy
    from node.provider.sandbox.errors import SandboxUnavailable

    assert issubclass(TransferTimeout, TransferFailed)
    assert issubclass(TransferTimeout, errors.PeerTimeout)
    assert Busy is errors.Busy and SandboxUnavailable is errors.SandboxUnavailable
    assert issubclass(RemoteFunctionError, UserError)


@pytest.mark.parametrize(("cls", "code"), [
    (UserError, 2), (ConfigError, 2), (LedgerRefused, 2), (InvalidInput, 2),
    (RemoteError, 1), (PaymentRefused, 1), (errors.PeerRefused, 1),
    (HostError, 1), (LedgerFailed, 1), (SandboxError, 1), (CacheError, 1), (JobFailed, 1),
    (ProtocolViolation, 2),
])
def test_exit_codes_stay_what_the_cli_always_used(cls: type[NodeError], code: int) -> None:
    assert cls.exit_code == code


@pytest.mark.parametrize(("make", "into"), [
    (lambda: BadSignature("the signature does not verify"), ProtocolViolation),
    (lambda: InvalidMessage("price must be >= 0"), InvalidInput),
    (lambda: FilterError("unexpected character"), InvalidInput),
    (lambda: InsufficientFunds("available 1.000000 credits"), LedgerRefused),
    (lambda: ReceiptRefused("stale receipt"), PaymentRefused),
    (lambda: LedgerCorrupt("entry 3 does not verify"), LedgerFailed),
    (lambda: FileNotFoundError(2, "No such file or directory"), HostError),
])
def test_lower_layer_errors_are_translated_with_their_message(
        make: Callable[[], Exception], into: type[NodeError]) -> None:
    original = make()
    mapped = translate(original)
    assert type(mapped) is into
    assert str(mapped) == str(original) and mapped.__cause__ is original


def test_node_errors_and_others_pass_through_unchanged() -> None:
    mine, bug = UserError("fix it"), KeyError("x")
    assert translate(mine) is mine and translate(bug) is bug
    with pytest.raises(LedgerFailed, match=r"^the file moved$") as info, translated():
        raise LedgerError("the file moved")
    assert isinstance(info.value.__cause__, LedgerError)
    with pytest.raises(KeyError), translated():
        raise KeyError("x")


@pytest.mark.parametrize(("raised", "code", "text"), [
    (InsufficientFunds("available 0 credits; run `offload ledger deposit AMOUNT`"), 2,
     "offload: error: available 0 credits; run `offload ledger deposit AMOUNT`\n"),
    (BadSignature("the quote is not signed by its provider"), 2,
     "offload: error: the quote is not signed by its provider\n"),
    (LedgerCorrupt("entry 7 does not chain"), 1, "offload: error: entry 7 does not chain\n"),
    (PermissionError(13, "Permission denied"), 1, "offload: error: [Errno 13] Permission denied\n"),
    (errors.PeerGone("the provider went away"), 1, "offload: error: the provider went away\n"),
    (UserError("run `offload init`"), 2, "offload: error: run `offload init`\n"),
])
def test_the_cli_catches_one_root_with_the_same_codes_and_text(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        raised: Exception, code: int, text: str) -> None:
    from node.cli import main as cli_main

    def boom(args: object) -> int:
        raise raised

    monkeypatch.delenv("OFFLOAD_DEBUG", raising=False)
    monkeypatch.setitem(cli_main.COMMANDS, "id", boom)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["id"])
    assert exit_info.value.code == code
    assert capsys.readouterr().err.endswith(text)
