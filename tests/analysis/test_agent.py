"""The agent, offline: the google-genai SDK talks to a local HTTP server on 127.0.0.1 that
speaks the Gemini REST API and replays scripted model turns (gemini_stub.GeminiStub). The
local server stands in for the real API, which tests cannot reach (no network, no key). The
database is the real incident recording (conftest.recording)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from google import genai
from google.genai import types

from analysis.gemini_stub import GeminiStub, answer, calls, function_responses
from analysis.incidents import VICTIM_COMM
from kernelsight.analysis.agent import loop, tools


def client(url: str) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(
        base_url=url, retry_options=types.HttpRetryOptions(attempts=1)))


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def first_evidence(req: dict) -> dict:
    """A real evidence row, taken from the findings the loop sent back to the 'model'."""
    fr = function_responses(req)[0]
    return fr["response"]["findings"][0]["evidence"][0]


def test_answer_cites_rows_and_unknown_rows_are_flagged(recording):
    def final(req):
        ev = first_evidence(req)
        return answer(f"CPU oversubscription; see {ev['table']}#{ev['id']} and "
                      "syscall_events#999999999.")

    with GeminiStub([calls(("get_findings", {})), final]) as stub:
        res = loop.run(client(stub.url), "gemini-test", str(recording.db), "why slow?",
                       None, None)
    assert stub.paths[0].endswith("/models/gemini-test:generateContent")
    assert res.turns == 2 and res.tool_calls == [("get_findings", True)]
    # Manual function calling: the SDK sent our declarations and never ran anything itself.
    decl = stub.requests[0]["tools"][0]["functionDeclarations"]
    assert sorted(d["name"] for d in decl) == sorted(tools.TOOLS)
    verified = {(c.table, c.id): c.verified for c in res.citations}
    assert verified[("syscall_events", 999999999)] is False
    assert sum(verified.values()) == 1


def test_refuses_unknown_tools_malformed_arguments_files_and_commands(recording):
    before = sha(recording.db)
    hostile = calls(("run_shell", {"command": "cat /etc/passwd"}),
                    ("read_file", {"path": "/etc/passwd"}),
                    ("get_findings", {"since": {"$gt": 1}}),
                    ("slowest_service_syscalls", {"limit": 10_000}),
                    ("get_schema", {"sql": "DROP TABLE syscall_events"}),
                    ("signal_series", {}),
                    ("sched_by_process", {"limit": "; DELETE FROM sched_events"}))
    with GeminiStub([hostile, answer("done")]) as stub:
        res = loop.run(client(stub.url), "m", str(recording.db), "q", None, None)
    assert [ok for _, ok in res.tool_calls] == [False] * 7
    replies = function_responses(stub.requests[1])
    errors = [r["response"]["error"] for r in replies]
    assert "unknown tool" in errors[0] and "unknown tool" in errors[1]
    assert "since" in errors[2] and "limit" in errors[3] and "unknown argument" in errors[4]
    assert "missing" in errors[5] and "limit" in errors[6]
    assert "root:x:0:0" not in json.dumps(stub.requests[1])  # no file was read
    assert sha(recording.db) == before  # nothing written


def test_instruction_like_comm_is_passed_as_data(recording):
    """The incident's victim process is named like an instruction. Its name reaches the
    model only as a JSON string value inside a function response; if the 'model' obeys it
    (asks for read_file), the call is refused like any other."""
    t1, t2 = (recording.incidents[0].start_ns, recording.incidents[0].end_ns)
    window = {"since": str(t1), "until": str(t2), "limit": 50}
    with GeminiStub([calls(("sched_by_process", window)), calls(("read_file", {"path": "/"})),
                     answer("no")]) as stub:
        res = loop.run(client(stub.url), "m", str(recording.db), "q", None, None)
    rows = function_responses(stub.requests[1])[0]["response"]["rows"]
    assert VICTIM_COMM in [r["comm"] for r in rows]
    assert res.tool_calls == [("sched_by_process", True), ("read_file", False)]
    for req in stub.requests:  # never in the system prompt nor in a text part
        assert VICTIM_COMM not in json.dumps(req.get("systemInstruction", {}))
        for c in req["contents"]:
            assert all(VICTIM_COMM not in p.get("text", "") for p in c["parts"])


def test_turns_are_bounded(recording):
    with GeminiStub([calls(("get_schema", {}))], repeat_last=True) as stub:
        res = loop.run(client(stub.url), "m", str(recording.db), "q", None, None,
                       max_turns=3)
    assert res.turns == 3 and len(stub.requests) == 3 and "3 model turns" in res.stopped


def ks(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY",
                                                           "GOOGLE_API_KEY")}
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**base, "COLUMNS": "160", **env})


def test_without_a_key_prints_findings_and_how_to_enable(recording):
    r = ks("ask", "why were syscalls slow?", "--db", str(recording.db))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Findings" in r.stdout and "GEMINI_API_KEY" in r.stdout


@pytest.mark.parametrize("cmd", [["ask", "why?"], ["analyze", "--explain"]])
def test_cli_with_a_key_uses_the_api(recording, cmd):
    with GeminiStub([calls(("get_findings", {})),
                     lambda req: answer("Cause: {t}#{i}.".format(
                         t=first_evidence(req)["table"], i=first_evidence(req)["id"]))]) as s:
        r = ks(*cmd, "--db", str(recording.db), GEMINI_API_KEY="k",
               GOOGLE_GEMINI_BASE_URL=s.url, KS_GEMINI_MODEL="gemini-stub")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "verified in the database" in r.stdout and "Agent answer" in r.stdout
    assert s.paths[0].endswith("/models/gemini-stub:generateContent")
