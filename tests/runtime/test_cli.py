"""The meshrun command as a user runs it: a real process, real signals, real output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MESHRUN = [sys.executable, "-m", "meshrun"]
ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "services.toml"
    path.write_text(text)
    return path


GREETER = """
[mesh]
transport = "memory"
[topics.greetings]
partitions = 3
[services.greeter]
module = "meshrun.examples.greeter"
port = {port}
group = "greeter-group"
"""


def run(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_check_prints_what_would_run(tmp_path, ports):
    config = write_config(tmp_path, GREETER.format(port=ports["g"]))
    result = run("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    row = next(line.split() for line in result.stdout.splitlines() if line.strip().startswith("greeter"))
    assert row == ["greeter", str(ports["g"]), "greeter-group", "x1", "greetings", "greetings"]
    assert "topic greetings: 3 partition(s)" in result.stdout


def test_check_fails_with_file_and_key(tmp_path):
    config = write_config(tmp_path, '[mesh]\ntransport = "kafak"\n[services.billing]\nmodule = '
                                    '"meshrun.services.billing"\n')
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "unknown transport 'kafak' (expected memory or kafka)" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_from_env_variable(tmp_path, ports):
    config = write_config(tmp_path, GREETER.format(port=ports["g"]))
    result = run("check", cwd=tmp_path.parent, MESHRUN_CONFIG=str(config))
    assert result.returncode == 0, result.stderr


def test_up_logs_json_and_stops_cleanly_on_sigterm(tmp_path, ports):
    config = write_config(tmp_path, GREETER.format(port=ports["g"]))
    proc = subprocess.Popen([*MESHRUN, "up", "--config", str(config), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = None
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
            if lines[-1]["event"] == "mesh_ready":
                ready = lines[-1]
                break
        assert ready is not None, (lines, proc.stderr.read() if proc.poll() is not None else "")
        assert ready["service"] == "mesh" and ready["seconds"] < 10
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        tail = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert tail[-1]["event"] == "mesh_stopped"
        assert all("service" in entry for entry in lines + tail)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_port_in_use_is_a_message_not_a_traceback(tmp_path, ports):
    import socket

    config = write_config(tmp_path, GREETER.format(port=ports["g"]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports["g"]))
        s.listen()
        result = run("up", "--config", str(config))
    assert result.returncode == 2
    assert f"service 'greeter' cannot listen on 127.0.0.1:{ports['g']}" in result.stderr
    assert "Traceback" not in result.stderr
