"""``capkit serve-web``'s page server (capkit.serve): every case of its hostile suite (tests/hostile_web.py)
holds, against one server in a child process: every mount serves its files with the page's headers;
links out of a mount (in every mount, at its top and in a subfolder) and traversal tricks serve nothing
outside; malformed requests are answered 4xx; 200 simultaneous requests are all answered; idle
connections are closed and block nothing; clients that hang up leave no traceback. And the command
itself: it serves a real bundle until Ctrl+C, and says in one line what is missing."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


import hostile_corpus  # noqa: E402
import hostile_web  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(server, tree): the page server over the suite's folders; at the end, nothing on its stderr."""
    tree = hostile_web.make_tree(tmp_path_factory.mktemp("site"))
    with hostile_web.PageServer(tree) as server:
        yield server, tree
        assert server.stderr() == ""


def assert_cases_hold(site, cases) -> None:
    server, tree = site
    outcomes = hostile_web.run_cases(server, tree, cases)
    broken = [f"{case.name!r}: {'; '.join(o.problems)}" for case, o in zip(cases, outcomes) if o.problems]
    assert not broken, "\n".join(broken)
    assert all(o.refused for case, o in zip(cases, outcomes) if case.hostile)


def test_every_mount_serves_its_files_with_the_page_headers(site) -> None:
    assert {path.split("/")[1] for path in site[1].files} >= {"js", "ort", "bundle", "index.html"}
    assert_cases_hold(site, hostile_web.file_cases(site[1]))


def test_links_out_of_every_mount_are_refused(site) -> None:
    cases = hostile_web.link_cases(site[1])
    assert len(cases) == 4 * 9 - 1  # 4 mounts: a link out at the top and in a subfolder, a folder link, ...
    assert_cases_hold(site, cases)


def test_traversal_tricks_never_leave_the_mounts(site) -> None:
    assert_cases_hold(site, hostile_web.path_cases(site[1]))


def test_malformed_requests_are_answered_4xx(site) -> None:
    assert_cases_hold(site, hostile_web.request_cases(site[1]))


@pytest.mark.slow
def test_simultaneous_idle_and_hung_up_connections(site) -> None:
    """200 simultaneous requests, all answered; 25 idle and 25 trickling connections, which block no fresh
    request and are closed at their deadline; 40 clients that hang up mid-response; no traceback."""
    cases = hostile_web.connection_cases(site[1])
    assert_cases_hold(site, cases)
    assert "Traceback" not in site[0].stderr()


def test_the_checkouts_page_is_served(tmp_path: Path) -> None:
    """The real mounts (clients/web, clients/js/src, onnxruntime-web's dist) with their content types."""
    from capkit.serve import ORT_DIST, page_folders
    from capkit.serve.server import Server
    from capkit.serve.web import page_app

    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        pytest.skip("onnxruntime-web is not installed in clients/js (scripts/setup.sh)")
    (tmp_path / "capkit.json").write_text("{}")
    server = Server(page_app(tmp_path, page_folders()), "127.0.0.1", 0).start()
    try:
        for path, kind in {"/": "text/html; charset=utf-8", "/app.js": "text/javascript; charset=utf-8",
                           "/js/browser.js": "text/javascript; charset=utf-8",
                           "/ort/ort.wasm.min.mjs": "text/javascript; charset=utf-8",
                           "/ort/ort-wasm-simd-threaded.wasm": "application/wasm",
                           "/bundle/capkit.json": "application/json"}.items():
            reply = hostile_web.get(server.port, path)
            assert (reply.status, reply.headers.get("content-type")) == (200, kind), path
            assert reply.headers["cross-origin-embedder-policy"] == "require-corp"
        assert hostile_web.get(server.port, "/js/").status == 404  # no listing
    finally:
        server.shutdown()


def test_content_types_do_not_depend_on_the_machine(monkeypatch, tmp_path: Path) -> None:
    """Where the machine's types are wrong (Windows' registry can map .js to text/plain; the browser then refuses
    the module), the page's files still get the types the browser needs."""
    from capkit.serve.server import Server
    from capkit.serve.web import page_app

    monkeypatch.setattr("starlette.responses.guess_type", lambda *args, **kwargs: ("text/plain", None))
    names = {"a.js": "text/javascript; charset=utf-8", "a.mjs": "text/javascript; charset=utf-8",
             "a.wasm": "application/wasm", "a.html": "text/html; charset=utf-8", "capkit.json": "application/json"}
    for name in names:
        (tmp_path / name).write_text("x")
    server = Server(page_app(tmp_path, {"": tmp_path}), "127.0.0.1", 0).start()
    try:
        found = {name: hostile_web.get(server.port, f"/bundle/{name}").headers.get("content-type") for name in names}
    finally:
        server.shutdown()
    assert found == names


def test_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    from capkit.runtime.errors import CapkitError
    from capkit.serve.web import page_app

    with pytest.raises(CapkitError, match=r"nowhere is not a folder \(to serve at /bundle\)$"):
        page_app(tmp_path / "nowhere", {"": tmp_path})


def test_serve_web_without_the_extra_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    from capkit.cli import main
    from capkit.serve import ORT_DIST

    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        pytest.skip("onnxruntime-web is not installed in clients/js (that is said first)")
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    result = CliRunner().invoke(main, ["serve-web", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert result.stderr == ('Error: serve-web needs the serve extra (uvicorn is missing): pip install "capkit[serve]" '
                             '(in a checkout: pip install -e ".[serve]")\n')


def test_an_installed_package_says_it_needs_a_checkout_first(monkeypatch, tmp_path: Path) -> None:
    """Without clients/ (an installed wheel) and without the extra, the checkout is named: installing the extra
    would not help (scripts/runtime_only_check.sh checks the same on a real install)."""
    import capkit.serve
    from capkit.cli import main

    monkeypatch.setattr(capkit.serve, "WEB", tmp_path / "clients" / "web")
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = CliRunner().invoke(main, ["serve-web", str(tmp_path)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: serve-web serves the page from a source checkout of capkit")


# -- the command on a real bundle --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return hostile_corpus.tiny_bundle(tmp_path_factory.mktemp("serve") / "bundle")


def capkit_command() -> list[str]:
    script = Path(sys.executable).with_name("capkit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "capkit"]


@pytest.mark.slow
def test_the_command_serves_a_bundle_until_ctrl_c(bundle: Path) -> None:
    proc = subprocess.Popen([*capkit_command(), "serve-web", str(bundle), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"Serving {bundle} at http://localhost:"), (line, proc.stderr.read() if not line else "")
        port = int(line.split("localhost:")[1].split("/")[0])
        reply = hostile_web.get(port, "/bundle/capkit.json")
        assert reply.status == 200 and reply.body == (bundle / "capkit.json").read_bytes()
        assert hostile_web.get(port, "/bundle/../capkit.json").status == 404
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (0, "", "")


@pytest.mark.slow
def test_a_port_in_use_is_one_line(bundle: Path) -> None:
    from capkit.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve-web", str(bundle), "--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot listen on 127.0.0.1:{port} (Address already in use)\n"
