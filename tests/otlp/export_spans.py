"""Export one agent-shaped trace to a bedrock server with the real
OpenTelemetry Python SDK, for tests/otlp.rs.

Usage: export_spans.py protobuf|json AGENT_ID

Reads BEDROCK_OTLP_ENDPOINT (the full /v1/traces URL) and BEDROCK_API_KEY.
"protobuf" uses opentelemetry-exporter-otlp-proto-http with gzip
compression; "json" uses opentelemetry-exporter-otlp-json-http, the SDK
project's exporter for OTLP's JSON encoding. A SimpleSpanProcessor exports
each span when it ends, so the children reach the server before their root.

The trace is a root AGENT span with an LLM span (model and token attributes)
and a TOOL span whose status is ERROR. Prints the trace id and the span ids
by name as one JSON object, and exits with status 1 when any export failed.
"""

import json
import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode


class RecordingExporter(SpanExporter):
    """Passes spans to another exporter and keeps every export's result."""

    def __init__(self, inner):
        self.inner = inner
        self.results = []

    def export(self, spans):
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()


def make_exporter(encoding, endpoint, headers):
    if encoding == "protobuf":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=10, compression=Compression.Gzip)
    if encoding == "json":
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=10)
    raise SystemExit(f"unknown encoding {encoding!r}: use protobuf or json")


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    encoding, agent_id = sys.argv[1], sys.argv[2]
    endpoint = os.environ["BEDROCK_OTLP_ENDPOINT"]
    headers = {"Authorization": f"Bearer {os.environ['BEDROCK_API_KEY']}"}

    exporter = RecordingExporter(make_exporter(encoding, endpoint, headers))
    provider = TracerProvider(resource=Resource.create({"service.name": "bedrock-sdk-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bedrock-sdk-test", "1.0")

    span_ids = {}
    with tracer.start_as_current_span(
        "run_agent",
        attributes={"openinference.span.kind": "AGENT", "agent.id": agent_id, "input.value": "Plan a vegan lunch"},
    ) as root:
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            attributes={
                "openinference.span.kind": "LLM",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 80,
                "gen_ai.usage.cache_read_input_tokens": 1000,
                "llm.token_count.completion_details.reasoning": 16,
                "input.value": "Which vegan dishes are on the menu?",
                "output.value": "Call search_menu with query vegan.",
            },
        ) as llm:
            span_ids["llm"] = format(llm.get_span_context().span_id, "016x")
        with tracer.start_as_current_span(
            "search_menu",
            attributes={"openinference.span.kind": "TOOL", "input.value": '{"query": "vegan"}', "menu.tags": ["lunch", "vegan"]},
        ) as tool:
            span_ids["tool"] = format(tool.get_span_context().span_id, "016x")
            tool.set_status(Status(StatusCode.ERROR, "menu service unavailable"))
        root.set_attribute("output.value", "No lunch ordered")
        span_ids["root"] = format(root.get_span_context().span_id, "016x")
        trace_id = format(root.get_span_context().trace_id, "032x")

    provider.shutdown()
    print(json.dumps({"trace_id": trace_id, "span_ids": span_ids, "results": [result.name for result in exporter.results]}))
    if len(exporter.results) != 3 or any(result != SpanExportResult.SUCCESS for result in exporter.results):
        sys.exit(1)


if __name__ == "__main__":
    main()
