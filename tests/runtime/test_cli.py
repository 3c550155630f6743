"""The meshrun command as a user runs it: a real process, real signals, real output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
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


PICKY = """
[mesh]
transport = "memory"
admin_port = {admin}
[topics.work]
partitions = 2
[services.picky]
module = "tests.runtime.sample_services:picky"
port = {picky}
group = "picky-group"
[services.picky.retry]
max_attempts = 1
[services.http_only]
module = "tests.runtime.sample_services:http_only"
port = {http_only}
"""


def picky_config(tmp_path: Path, ports) -> Path:
    return write_config(tmp_path, PICKY.format(admin=ports["admin"], picky=ports["picky"],
                                               http_only=ports["http_only"]))


def start_up(config: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    """`meshrun up` in its own process, returned once it logged mesh_ready (its log goes to a file, so a pipe
    nobody reads never blocks it)."""
    with log.open("w") as out:
        proc = subprocess.Popen([*MESHRUN, "up", "--config", str(config), "--log-format", "json", *args],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if any(json.loads(line).get("event") == "mesh_ready" for line in log.read_text().splitlines()
               if line.startswith("{")):
            return proc
        time.sleep(0.05)
    stop(proc)
    raise AssertionError(f"`meshrun up {' '.join(args)}` not ready: {log.read_text()}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def admin_topics(ports) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/topics", timeout=10) as response:
        return {t["name"]: t for t in json.load(response)["topics"]}


def test_topics_json_counts_records_and_dead_letters_of_a_running_mesh(tmp_path, ports):
    config = picky_config(tmp_path, ports)
    proc = start_up(config, tmp_path / "mesh.log")
    try:
        for job in ("a", "b", "poison"):
            request = urllib.request.Request(f"http://127.0.0.1:{ports['picky']}/jobs/{job}", method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 202
        deadline = time.monotonic() + 30
        while not (admin_topics(ports)["work.dlq"]["records"] == 1
                   and sum(p["lag"] for p in admin_topics(ports)["work"]["groups"]["picky-group"]) == 0):
            assert time.monotonic() < deadline, admin_topics(ports)
            time.sleep(0.05)

        result = run("topics", "--config", str(config), "--json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        topics = {t["name"]: t for t in document["topics"]}
        assert document["transport"] == "memory" and set(topics) == {"work", "work.dlq"}
        assert (topics["work"]["partitions"], topics["work"]["records"]) == (2, 3)
        assert (topics["work.dlq"]["records"], topics["work.dlq"]["groups"]) == (1, {})
        lags = topics["work"]["groups"]["picky-group"]
        assert [set(p) for p in lags] == [{"partition", "log_start", "log_end", "committed", "lag"}] * 2
        assert sum(p["committed"] for p in lags) == sum(p["log_end"] for p in lags) == 3

        plain = run("topics", "--config", str(config))
        assert plain.returncode == 0, plain.stderr
        rows = [line.split() for line in plain.stdout.splitlines()]
        assert rows[0] == ["topic", "partitions", "records"]
        assert ["work", "2", "3"] in rows and ["work.dlq", "2", "1"] in rows
        assert "! 1 dead-lettered record(s) of work" in plain.stdout
    finally:
        stop(proc)


def test_split_memory_mesh_runs_side_by_side_and_topics_names_the_process_to_start(tmp_path, ports):
    config = picky_config(tmp_path, ports)
    without_topics = start_up(config, tmp_path / "http_only.log", "--only", "http_only")
    try:
        for command in (["topics"], ["replay", "--group", "picky-group", "--topic", "work", "--to", "earliest"]):
            refused = run(*command, "--config", str(config))
            assert refused.returncode == 2
            assert "the in-memory mesh is not running" in refused.stderr
            assert "the process that runs any of picky" in refused.stderr
            assert "Traceback" not in refused.stderr
        # The process with topics opens the admin port; the one without left it free.
        with_topics = start_up(config, tmp_path / "picky.log", "--except", "http_only")
        try:
            result = run("topics", "--config", str(config), "--json")
            assert result.returncode == 0, result.stderr
            assert [t["name"] for t in json.loads(result.stdout)["topics"]] == ["work", "work.dlq"]
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['http_only']}/status", timeout=10) as response:
                assert json.load(response) == {"status": "up"}
        finally:
            stop(with_topics)
    finally:
        stop(without_topics)
