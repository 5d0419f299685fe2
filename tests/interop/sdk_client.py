"""Drives `agentkimi serve` with the official Python MCP SDK over stdio.

Run by tests/interop.rs, which starts the scripted mock model on loopback and
passes its URL here. For each protocol version given on the command line,
this spawns a fresh server and walks one session through every tool a client
uses: list tools, start with wait:false, status, wait, send (with progress),
diff, an error result, and end. Any mismatch raises, so the exit status is
the verdict; the last line of stdout is a JSON report.

Usage: sdk_client.py AGENTKIMI_BINARY MOCK_BASE_URL STATE_DIR VERSION...
"""

import json
import os
import sys
from pathlib import Path

import anyio
import mcp.client.session as client_session
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

TOOLS = {
    "agentkimi_start",
    "agentkimi_send",
    "agentkimi_end",
    "agentkimi_status",
    "agentkimi_wait",
    "agentkimi_list",
    "agentkimi_diff",
    "agentkimi_cancel",
}


def check(cond, what, detail=None):
    if not cond:
        raise AssertionError(f"{what}: {json.dumps(detail, indent=1, default=str)}")


def ok(result, tool):
    """The structured content of a successful result."""
    check(not result.is_error, f"{tool} returned an error", [c.model_dump() for c in result.content])
    check(result.structured_content is not None, f"{tool} has no structuredContent")
    return result.structured_content


async def run(binary, base_url, state, version):
    # The SDK offers its newest handshake version; to check an older one the
    # client is made to offer that instead.
    client_session.LATEST_HANDSHAKE_VERSION = version
    home = Path(state) / version
    (home / "user").mkdir(parents=True, exist_ok=True)
    params = StdioServerParameters(
        command=binary,
        args=["serve"],
        env={
            "AGENTKIMI_HOME": str(home / "agentkimi"),
            "HOME": str(home / "user"),
            "AGENTKIMI_BASE_URL": base_url,
            "KIMI_API_KEY": "interop-test-key",
            "PATH": os.environ.get("PATH", ""),
        },
        cwd=str(home / "user"),
    )
    progress = []

    async def on_progress(value, total, message):
        progress.append(message)

    report = {"version": version}
    with open(home / "server-stderr.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                check(init.protocol_version == version, "negotiated version", init.protocol_version)
                report["server"] = init.server_info.name

                tools = (await session.list_tools()).tools
                names = {t.name for t in tools}
                check(TOOLS <= names, "tool list", sorted(names))
                check(all(t.output_schema for t in tools), "every tool has an outputSchema")

                started = ok(
                    await session.call_tool(
                        "agentkimi_start", {"prompt": "interop please", "wait": False}
                    ),
                    "agentkimi_start",
                )
                check(started["state"] == "running" and started["turn"] == 1, "start", started)
                sid = started["session_id"]

                status = ok(
                    await session.call_tool("agentkimi_status", {"session_id": sid}),
                    "agentkimi_status",
                )
                check(status["state"] in ("running", "finished"), "status", status)

                result = ok(
                    await session.call_tool(
                        "agentkimi_wait",
                        {"session_id": sid, "timeout_s": 60},
                        progress_callback=on_progress,
                    ),
                    "agentkimi_wait",
                )
                check(result.get("status") == "completed", "wait", result)
                check("+from python" in result["diff"], "wait diff", result["diff"])

                sent = ok(
                    await session.call_tool(
                        "agentkimi_send",
                        {"session_id": sid, "message": "anything else?"},
                        progress_callback=on_progress,
                    ),
                    "agentkimi_send",
                )
                check(sent["status"] == "completed" and sent["turn"] == 2, "send", sent)
                check(sent["session_usage"]["input_tokens"] > sent["usage"]["input_tokens"], "usage", sent)

                diff = ok(
                    await session.call_tool(
                        "agentkimi_diff", {"session_id": sid, "path": "interop.txt"}
                    ),
                    "agentkimi_diff",
                )
                check(diff["text"].startswith("diff --git a/interop.txt"), "diff", diff)

                listed = ok(await session.call_tool("agentkimi_list", {}), "agentkimi_list")
                check(any(s["session_id"] == sid for s in listed["sessions"]), "list", listed)

                # An error result: isError with advice, no structuredContent,
                # and the SDK must not reject it against the outputSchema.
                bad = await session.call_tool("agentkimi_status", {"session_id": "kimi-000000000000"})
                check(bad.is_error, "unknown session is an error result", bad.model_dump())
                check("agentkimi_list" in bad.content[0].text, "error advice", bad.content[0].text)

                ended = ok(
                    await session.call_tool("agentkimi_end", {"session_id": sid}), "agentkimi_end"
                )
                check(ended["ended"] is True, "end", ended)

    check("Kimi is thinking (step 1)" in progress, "progress notifications", progress)
    check(any(m and m.startswith("Write interop.txt") for m in progress), "tool progress", progress)
    report["progress"] = progress
    return report


async def main():
    binary, base_url, state, *versions = sys.argv[1:]
    reports = [await run(binary, base_url, state, v) for v in versions]
    print(json.dumps(reports))


if __name__ == "__main__":
    anyio.run(main)
