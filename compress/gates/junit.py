"""Gate outcomes as JUnit XML, the test-report format every CI system displays.

One ``<testsuite>`` named after the report, one ``<testcase classname="compress.gates">`` per
gate, and a ``<failure>`` with the measured value and the threshold for each failed gate. Built
with ``xml.etree`` so every message is escaped properly. Pure: returns a string.

Example:
    >>> from compress.gates.gate import GateOutcome
    >>> xml = gates_junit_xml([GateOutcome("min_speedup", False, 1.2, 1.5, ">=",
    ...                                    "speedup: 1.20x < 1.5 (required >= 1.5)")], "demo")
    >>> 'failures="1"' in xml and 'name="min_speedup"' in xml
    True
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from compress.gates.gate import GateOutcome, gate_cells

__all__ = ["JUNIT_CLASSNAME", "gates_junit_xml"]

JUNIT_CLASSNAME = "compress.gates"


def gates_junit_xml(outcomes: Sequence[GateOutcome], report_name: str, *,
                    properties: Mapping[str, Any] | None = None,
                    timestamp: str | None = None) -> str:
    """A JUnit XML document (with declaration) for ``outcomes``.

    ``properties`` (e.g. the report path and run status) go into the suite's
    ``<properties>``; ``timestamp`` (ISO 8601) into its ``timestamp`` attribute.
    """
    failures = sum(not o.passed for o in outcomes)
    counts = {"tests": str(len(outcomes)), "failures": str(failures), "errors": "0",
              "skipped": "0", "time": "0"}
    root = ET.Element("testsuites", name="compress gate", **counts)
    suite = ET.SubElement(root, "testsuite", name=report_name, **counts)
    if timestamp:
        suite.set("timestamp", timestamp)
    if properties:
        props = ET.SubElement(suite, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", name=str(key), value=str(value))
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", classname=JUNIT_CLASSNAME, name=o.name, time="0")
        label, measured, threshold = gate_cells(o.to_dict())
        detail = (f"{label}\nmeasured: {measured}\nthreshold: {threshold}\n"
                  f"threshold from: {o.source}")
        if o.passed:
            ET.SubElement(case, "system-out").text = detail
        else:
            failure = ET.SubElement(case, "failure", message=o.message, type="GateFailed")
            failure.text = detail
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
