"""Business metrics as CloudWatch Embedded Metric Format lines, through Powertools Metrics.

The dashboard in template.yaml reads these from namespace ``convbridge``: JobsSubmitted,
JobsFinished and JobsFailed per rule and provider, RelayBytes, and CallbackLatencyMs (from the
provider's end of job to our settlement). EMF goes to stdout, which Lambda ships to CloudWatch
Logs; no PutMetricData permission or call is needed. ``POWERTOOLS_METRICS_DISABLED=true``
silences it (the demo does, to keep its output readable).
"""

from __future__ import annotations

import logging
import os
import threading

NAMESPACE = "convbridge"
#: records of a batch are handled on several threads; print() writes a line and its newline
#: separately, so unserialised EMF lines could interleave and CloudWatch would drop both
_EMIT = threading.Lock()

logger = logging.getLogger(__name__)


def record(name: str, value: float, *, unit: str = "Count", **dimensions: str) -> None:
    """One metric data point; never lets a metrics failure break the pipeline."""
    # single_metric does not consult POWERTOOLS_METRICS_DISABLED itself (Metrics.flush does)
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in {"1", "true"}:
        return
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    try:
        with _EMIT, single_metric(name=name, unit=MetricUnit[unit], value=value,
                                  namespace=NAMESPACE) as metric:
            for key, dimension in dimensions.items():
                metric.add_dimension(name=key, value=dimension)
    except Exception:  # noqa: BLE001 (metrics are best effort by design)
        logger.warning("metric %s not recorded", name, exc_info=True)
