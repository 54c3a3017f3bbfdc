"""Logging and tracing, set up once per process.

- Logs are structlog JSON lines on stderr (a service's stderr is its log file under `hwctl up`),
  each with the service name and, inside a traced operation, `trace_id` and `span_id`.
- Traces are OpenTelemetry spans. The W3C trace context travels in NATS headers (`traceparent`) on
  requests and inside each event's envelope (`trace`), so one trace spans the CLI, the service that
  handled the command and the events it appended.
- Exporters come from the environment: `HW_TRACE_FILE=path` writes finished spans as JSON lines;
  `OTEL_EXPORTER_OTLP_ENDPOINT` sends them over OTLP/HTTP when the
  `opentelemetry-exporter-otlp-proto-http` package is installed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

_configured_for: str | None = None
_provider: TracerProvider | None = None
_trace_file: TextIO | None = None


def _add_trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def configure(service: str, *, level: str | None = None) -> None:
    """Set up JSON logging and tracing for `service`. Safe to call more than once."""
    global _configured_for
    if _configured_for is not None:
        return
    _configured_for = service
    level_name = (level or os.environ.get("HW_LOG_LEVEL", "info")).upper()
    numeric = logging.getLevelNamesMapping().get(level_name, logging.INFO)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)

    # Libraries (nats-py among them) log through the standard library: render those as JSON too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))

    _configure_tracing(service)


def _configure_tracing(service: str) -> None:
    global _provider, _trace_file
    provider = TracerProvider(resource=Resource.create({"service.name": f"headwater-{service}"}))
    trace_path = os.environ.get("HW_TRACE_FILE")
    if trace_path:
        _trace_file = open(trace_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives with the process

        def one_line(span: ReadableSpan) -> str:
            return str(span.to_json(indent=None)) + "\n"

        provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(out=_trace_file, formatter=one_line))
        )
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log().warning("otlp_exporter_missing", hint="pip install opentelemetry-exporter-otlp-proto-http")
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown() -> None:
    """Flush spans still buffered; call once before the process exits."""
    if _provider is not None:
        _provider.shutdown()
    if _trace_file is not None:
        _trace_file.close()


def log(**bound: Any) -> Any:
    """A structlog logger, optionally with fields bound."""
    return structlog.get_logger().bind(**bound) if bound else structlog.get_logger()


def tracer() -> trace.Tracer:
    return trace.get_tracer("headwater")


def inject(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, maybe `tracestate`)."""
    carrier = {} if carrier is None else carrier
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> Context:
    """A context whose parent is the span described by `carrier` (headers or an envelope's `trace`)."""
    return propagate.extract(carrier or {})
