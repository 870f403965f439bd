"""What a job log may make the client write, where the token may go, and which commands get an --out (no Ray)."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from autoprune.distributed.auth import check_token_destination, ensure_local_token, is_private_address
from autoprune.distributed.job import run_dir
from autoprune.distributed.results import MAX_UNPACKED, NONE, RESULT_FILES, extract_payload, pack, unpack
from autoprune.errors import AutopruneError


def tar_gz(*entries: tuple[str, bytes], kind: bytes = tarfile.REGTYPE) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith(".partial")]


def test_only_allow_listed_names_and_nothing_written_when_one_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "results"
    for bad in (".bashrc", "authorized_keys", "../plan.json", "sub/plan.json", "/etc/plan.json", "tb"):
        payload = tar_gz(("plan.json", b"{}"), (bad, b"x"))
        with pytest.raises(AutopruneError, match="refusing results entry"):
            unpack(payload, dest)
        assert not dest.exists() and not leftovers(tmp_path)  # all or nothing: not even plan.json
    for kind in (tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE):
        with pytest.raises(AutopruneError, match="refusing results entry"):
            unpack(tar_gz(("plan.json", b""), kind=kind), dest)
    with pytest.raises(AutopruneError, match="twice"):
        unpack(tar_gz(("plan.json", b"1"), ("plan.json", b"2")), dest)
    assert not dest.exists() and not leftovers(tmp_path)


def test_existing_files_need_force_and_are_replaced_all_together(tmp_path: Path) -> None:
    dest = tmp_path / "results"
    dest.mkdir()
    (dest / "summary.md").write_text("mine")
    (dest / "notes.txt").write_text("keep")
    payload = tar_gz(("plan.json", b"new plan"), ("summary.md", b"new summary"))
    with pytest.raises(AutopruneError, match="already exists; pass --force"):
        unpack(payload, dest)
    assert (dest / "summary.md").read_text() == "mine" and not (dest / "plan.json").exists()

    written = unpack(payload, dest, force=True)
    assert [p.name for p in written] == ["plan.json", "summary.md"]
    assert (dest / "summary.md").read_text() == "new summary" and (dest / "plan.json").read_text() == "new plan"
    assert (dest / "notes.txt").read_text() == "keep" and not leftovers(tmp_path)


def test_symlinks_in_the_destination_are_refused_even_with_force(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    dest = tmp_path / "results"
    dest.mkdir()
    (dest / "plan.json").symlink_to(victim)
    with pytest.raises(AutopruneError, match="symbolic link"):
        unpack(tar_gz(("plan.json", b"evil")), dest, force=True)
    assert victim.read_text() == "untouched"

    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(AutopruneError, match="symbolic link"):
        unpack(tar_gz(("plan.json", b"{}")), linked)
    assert not (tmp_path / "elsewhere").exists()


def test_size_cap_stops_inflating_early(tmp_path: Path) -> None:
    """A small payload inflating far past the cap is refused without inflating it (memory stays small)."""
    bomb = tar_gz(("pruned.pt", bytes(64 * 2**20)))  # 64 MiB of zeros, ~65 KiB compressed
    tracemalloc.start()
    try:
        with pytest.raises(AutopruneError, match="more than 1 MiB"):
            unpack(bomb, tmp_path / "results", max_bytes=2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    assert not (tmp_path / "results").exists() and not leftovers(tmp_path)


def test_default_cap_refuses_a_member_announcing_more_than_it(tmp_path: Path) -> None:
    """A header claiming more than MAX_UNPACKED bytes is refused from the header alone."""
    info = tarfile.TarInfo("pruned.pt")
    info.size = MAX_UNPACKED + 1
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with pytest.raises(AutopruneError, match="more than 512 MiB"):
        unpack(gzip.compress(header + bytes(512)), tmp_path / "results")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("payload", [b"not gzip at all", gzip.compress(b"gzip, but not a tar " * 40), b"", b"\x1f\x8b"])
def test_payload_that_is_not_a_tar_gz_is_one_clear_error(tmp_path: Path, payload: bytes) -> None:
    with pytest.raises(AutopruneError, match=r"not a readable tar\.gz") as err:
        unpack(payload, tmp_path / "results")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "results").exists() and not leftovers(tmp_path)


def test_pack_and_unpack_share_the_allow_list(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in RESULT_FILES:
        (run / name).write_text(name)
    (run / "stray.txt").write_text("not sent")
    payload, _ = pack(run)
    written = unpack(payload, tmp_path / "back")
    assert sorted(p.name for p in written) == sorted(RESULT_FILES)


def test_a_job_without_a_run_directory_has_no_payload() -> None:
    assert extract_payload(f"info output\n{NONE} (`autoprune info` writes no run directory) ===\n") is None
    with pytest.raises(AutopruneError, match="printed no results"):
        extract_payload("just a log\n")


def test_only_run_commands_get_an_out() -> None:
    args, directory = run_dir(["info", "--model", "resnet20"], "job1")
    assert args == ["info", "--model", "resnet20"] and directory is None
    args, directory = run_dir(["apply", "--plan", "p.json", "--out", "small.pt"], "job1")
    assert args[-1] == "small.pt" and directory is None  # apply's --out is a file, not a run directory
    assert run_dir(["search", "--help"], "job1") == (["search", "--help"], None)
    args, directory = run_dir(["search", "--target-flops", "0.5"], "job1")
    assert args[-2] == "--out" and directory is not None and directory.name == "job1"
    assert run_dir(["sweep", "--out=runs/x"], "job1")[1] == Path("runs/x")
    assert run_dir(["search", "--resume", "runs/r"], "job1")[1] == Path("runs/r")


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("http://127.0.0.1:8265", True),
        ("http://127.3.4.5:8265", True),
        ("http://localhost:8265", True),
        ("http://[::1]:8265", True),
        ("127.0.0.1:8265", True),
        ("https://ray.example.com:8265", True),
        ("http://10.0.0.5:8265", False),
        ("http://ray.example.com:8265", False),
        ("http://localhost.example.com:8265", False),
        ("10.0.0.5:8265", False),
        ("ray://127.0.0.1:10001", False),
        ("anyscale://cluster", False),
        ("http://[::1", False),
    ],
)
def test_token_goes_only_to_loopback_or_https(address: str, private: bool) -> None:
    assert is_private_address(address) is private
    if private:
        check_token_destination(address, "secret")
    else:
        with pytest.raises(AutopruneError, match="--insecure-token"):
            check_token_destination(address, "secret")
        check_token_destination(address, "secret", insecure=True)
    check_token_destination(address, None)  # no token, nothing to protect


def test_local_token_is_written_0600_and_only_when_none_exists(monkeypatch, tmp_path: Path) -> None:
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = ensure_local_token()
    assert path == tmp_path / ".ray" / "auth_token"
    assert (path.stat().st_mode & 0o777) == 0o600 and len(path.read_text()) == 64
    first = path.read_text()
    assert ensure_local_token() is None and path.read_text() == first  # an existing token is kept

    monkeypatch.setenv("HOME", str(tmp_path / "other"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "given")
    assert ensure_local_token() is None
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ensure_local_token() is None and not (tmp_path / "other").exists()
