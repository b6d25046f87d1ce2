"""The agent loop on the google-genai SDK with manual function calling only.

The SDK's automatic function calling is disabled: each function call the model asks for is
dispatched here through :func:`tools.call` (the allow-list), its result sent back as a
function response, for at most ``MAX_TURNS`` model turns and ``MAX_TOKENS`` total tokens.
The final answer's citations (``table#id``) are checked against the database; unknown ones
are flagged, never shown as fact. Without GEMINI_API_KEY the deterministic findings are
printed with how to enable the agent, and the exit code is 0."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.text import Text
from sqlalchemy import Connection, text

from kernelsight import schema
from kernelsight.analysis.agent import prompts, tools
from kernelsight.db import open_readonly
from kernelsight.exceptions import ConfigError
from kernelsight.safetext import plain, printable
from kernelsight.sqlcompat import statement_timeout

DEFAULT_MODEL = "gemini-2.5-flash"
MAX_TURNS = 8
MAX_TOKENS = 200_000  # prompt + output tokens over the whole conversation
MAX_OUTPUT_TOKENS = 2048
TIMEOUT_MS = 60_000
# Any one tool's SQL statement is cancelled after this long (PostgreSQL enforces it; the
# session is read-only there too: db.open_readonly).
TOOL_STATEMENT_TIMEOUT_S = 10.0
CITATION = re.compile(r"\b([a-z_]{3,40})#(\d{1,18})\b")
ENABLE_HINT = ("The Gemini agent is off: set GEMINI_API_KEY (and optionally KS_GEMINI_MODEL, "
               f"default {DEFAULT_MODEL}) to have `kernelsight ask` and `analyze --explain` "
               "explain these findings.")


@dataclass
class Citation:
    table: str
    id: int
    verified: bool


@dataclass
class AgentResult:
    answer: str
    citations: list[Citation] = field(default_factory=list)
    tool_calls: list[tuple[str, bool]] = field(default_factory=list)  # name, allowed
    turns: int = 0
    tokens: int = 0
    stopped: str = ""  # why the loop stopped early, if it did


class Context:
    """What tools share: the database path and the window, with the analysis cached."""

    def __init__(self, db_path: str, since: int | None, until: int | None) -> None:
        self.db_path, self.since, self.until = db_path, since, until
        self._cache: dict[tuple[int | None, int | None], Any] = {}

    def analysis(self, since: int | None, until: int | None) -> Any:
        from kernelsight.analysis.findings import analyze

        key = (since if since is not None else self.since,
               until if until is not None else self.until)
        if key not in self._cache:
            eng = open_readonly(self.db_path)
            try:
                self._cache[key] = analyze(eng, *key)
            finally:
                eng.dispose()
        return self._cache[key]


def verify(conn: Connection, answer: str) -> list[Citation]:
    """Each ``table#id`` in the answer, checked: the table is ours and the row exists."""
    out: list[Citation] = []
    seen = set()
    for table, rid in CITATION.findall(answer):
        if (table, rid) in seen:
            continue
        seen.add((table, rid))
        ok = table in schema.TABLES and conn.execute(
            text(f'SELECT 1 FROM "{table}" WHERE id = :i'), {"i": int(rid)}).first() is not None
        out.append(Citation(table, int(rid), ok))
    return out


def _declarations(types: Any) -> list[Any]:
    return [types.FunctionDeclaration(name=t.name, description=t.description,
                                      parameters_json_schema=t.parameters)
            for t in tools.TOOLS.values()]


def run(client: Any, model: str, db_path: str, question: str, since: int | None,
        until: int | None, max_turns: int = MAX_TURNS, max_tokens: int = MAX_TOKENS
        ) -> AgentResult:
    """One conversation; ``client`` is a ``google.genai.Client``."""
    from google.genai import types

    ctx = Context(db_path, since, until)
    w = ctx.analysis(None, None).window
    window = (f"{datetime.fromtimestamp(w.since_ns / 1e9, UTC).isoformat()} to "
              f"{datetime.fromtimestamp(w.until_ns / 1e9, UTC).isoformat()}")
    config = types.GenerateContentConfig(
        system_instruction=prompts.SYSTEM,
        tools=[types.Tool(function_declarations=_declarations(types))],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        max_output_tokens=MAX_OUTPUT_TOKENS, temperature=0.0)
    contents: list[Any] = [types.Content(role="user", parts=[
        types.Part(text=prompts.question_prompt(question, window))])]
    res = AgentResult("")
    eng = open_readonly(db_path)
    try:
        with eng.connect() as conn:
            statement_timeout(conn, TOOL_STATEMENT_TIMEOUT_S)
            conn.commit()  # for the session, not only this transaction
            while True:
                if res.turns >= max_turns:
                    res.stopped = f"stopped after {max_turns} model turns"
                    break
                if res.tokens >= max_tokens:
                    res.stopped = f"stopped at the token budget ({max_tokens:,})"
                    break
                resp = client.models.generate_content(model=model, contents=contents,
                                                      config=config)
                res.turns += 1
                um = getattr(resp, "usage_metadata", None)
                res.tokens += int(getattr(um, "total_token_count", 0) or 0)
                cand = (resp.candidates or [None])[0]
                content = getattr(cand, "content", None)
                calls = [p.function_call for p in (getattr(content, "parts", None) or [])
                         if getattr(p, "function_call", None) is not None]
                if not calls:
                    res.answer = resp.text or ""
                    break
                contents.append(content)
                replies = []
                for fc in calls:
                    out = tools.call(conn, fc.name, fc.args, ctx)
                    res.tool_calls.append((str(fc.name), "error" not in out))
                    replies.append(types.Part.from_function_response(
                        name=str(fc.name or "unknown"), response=out))
                contents.append(types.Content(role="user", parts=replies))
            res.citations = verify(conn, res.answer)
    finally:
        eng.dispose()
    return res


def make_client(api_key: str) -> Any:
    """A Gemini client; GOOGLE_GEMINI_BASE_URL (the SDK's own variable) can point it at a
    proxy or, in the tests, at a local stand-in server."""
    try:
        from google import genai
        from google.genai import types
    except ModuleNotFoundError:
        raise ConfigError("the agent needs google-genai: pip install -e 'services[analysis]'"
                          ) from None
    opts = types.HttpOptions(timeout=TIMEOUT_MS,
                             base_url=os.environ.get("GOOGLE_GEMINI_BASE_URL") or None,
                             retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=api_key, http_options=opts)


def show(res: AgentResult, console: Console) -> None:
    console.rule("[bold]Agent answer")
    console.print(plain(res.answer or "(no answer)", limit=20_000))
    if res.stopped:
        console.print(Text(f"Note: {res.stopped}; the answer may be incomplete.",
                           style="yellow"))
    refused = [n for n, ok in res.tool_calls if not ok]
    if refused:
        console.print(Text("Tool calls refused or failed: " + ", ".join(
            printable(n, 40) for n in refused)))
    if res.citations:
        console.print("Cited rows:")
        for c in res.citations:
            console.print(Text(f"  {printable(c.table, 40)}#{c.id} ").append(
                Text("verified in the database", style="green") if c.verified else
                Text("NOT IN THE DATABASE: unverified, do not rely on it", style="bold red")))
    else:
        console.print(Text("The answer cites no rows; treat it as unverified.",
                           style="yellow"))


def explain_or_fallback(db_path: str, since: int | None, until: int | None,
                        question: str | None, console: Console,
                        result: Any = None) -> int:
    """Ask the agent, or print the deterministic findings when no key is set (exit 0)."""
    key = os.environ.get("GEMINI_API_KEY", "")
    if not key:
        if result is None:
            from kernelsight.analysis.command import render
            from kernelsight.analysis.findings import analyze

            eng = open_readonly(db_path)
            try:
                result = analyze(eng, since, until)
            finally:
                eng.dispose()
            render(result, console)
        console.print(Text(ENABLE_HINT))
        return 0
    client = make_client(key)
    model = os.environ.get("KS_GEMINI_MODEL") or DEFAULT_MODEL
    try:
        res = run(client, model, db_path, question or prompts.EXPLAIN, since, until)
    except Exception as e:  # the API's errors (HTTP, quota, network) end in one line
        from google.genai import errors

        if isinstance(e, errors.APIError | OSError) or "httpx" in type(e).__module__:
            console.print(Text(f"kernelsight: the Gemini API call failed: "
                               f"{printable(e, 300)}", style="bold red"))
            return 1
        raise
    show(res, console)
    return 0 if all(c.verified for c in res.citations) else 1
