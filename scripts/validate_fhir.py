#!/usr/bin/env python3
"""Validate FHIR resources served by an Osler hub with an independent library.

Usage: validate_fhir.py RESOURCES.json

RESOURCES.json holds a JSON array of resources exactly as the hub served them. Each is parsed
with the `fhir.resources` R4B models (an independent implementation of the FHIR structure
definitions); every Observation is also checked against the R4 vital-signs profile rules
restated below, and its codes against the reference table in shared/reference/clinical.md,
restated here independently of Osler's Rust catalog so that a wrong code on either side fails.

Exit status 0 when everything is valid; 1 with one line per problem otherwise.
"""

import json
import re
import sys

from fhir.resources.R4B import get_fhir_model_class

LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITALSIGNS = "http://hl7.org/fhir/StructureDefinition/vitalsigns"

# LOINC code -> (category, UCUM unit, MDC code or None). Source: shared/reference/clinical.md.
EXPECTED = {
    "8867-4": ("vital-signs", "/min", "147842"),
    "40443-4": ("vital-signs", "/min", None),
    "2708-6": ("vital-signs", "%", "150456"),
    "85354-9": ("vital-signs", None, "150020"),
    "29463-7": ("vital-signs", "kg", "188736"),
    "8310-5": ("vital-signs", "Cel", "150364"),
    "9279-1": ("vital-signs", "/min", "151562"),
    "99504-3": ("laboratory", "mg/dL", "160212"),
    "41653-7": ("laboratory", "mg/dL", "160184"),
    "55423-8": ("activity", "{steps}", None),
    "41982-0": ("vital-signs", "%", "188748"),
    "80404-7": ("vital-signs", "ms", None),
}
# Blood-pressure components: systolic 8480-6 (MDC 150021), diastolic 8462-4 (MDC 150022).
BP_COMPONENTS = {"8480-6": "150021", "8462-4": "150022"}
# FHIR dateTime with time: seconds and a zone are required when a time is given.
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def codings(concept, system):
    return [c.get("code") for c in concept.get("coding", []) if c.get("system") == system]


def check_quantity(q, unit, where, problems):
    if not isinstance(q, dict):
        problems.append(f"{where}: valueQuantity is missing")
        return
    if not isinstance(q.get("value"), (int, float)):
        problems.append(f"{where}: valueQuantity.value is not a number")
    if q.get("system") != UCUM:
        problems.append(f"{where}: valueQuantity.system is {q.get('system')!r}, not UCUM")
    if q.get("code") != unit:
        problems.append(f"{where}: valueQuantity.code is {q.get('code')!r}, expected {unit!r}")


STATISTICS = "http://hl7.org/fhir/observation-statistics"
OSLER_SUMMARY = "https://osler.dev/fhir/CodeSystem/edge-summary"


def check_observation(o, where, problems):
    if o.get("status") not in ("registered", "preliminary", "final", "amended", "corrected"):
        problems.append(f"{where}: status {o.get('status')!r}")
    loinc = codings(o.get("code", {}), LOINC)
    if not loinc:
        problems.append(f"{where}: no LOINC coding")
        return
    if loinc[0] not in EXPECTED:
        problems.append(f"{where}: first LOINC code {loinc[0]} is not in the reference table")
        return
    category, unit, mdc = EXPECTED[loinc[0]]
    cats = [c for cat in o.get("category", []) for c in cat.get("coding", []) if c.get("system") == CATEGORY]
    if [c.get("code") for c in cats] != [category]:
        problems.append(f"{where}: category {[c.get('code') for c in cats]}, expected [{category!r}]")
    if mdc is not None and codings(o["code"], MDC) != [mdc]:
        problems.append(f"{where}: MDC coding {codings(o['code'], MDC)}, expected [{mdc!r}]")
    if category == "vital-signs" and VITALSIGNS not in o.get("meta", {}).get("profile", []):
        problems.append(f"{where}: a vital sign that does not claim the vital-signs profile")
    if loinc[0] == "41653-7" and any(c in ("99504-3", "105272-9") for c in loinc):
        problems.append(f"{where}: CGM and capillary codes mixed")
    subject = o.get("subject", {}).get("reference", "")
    if not subject.startswith("Patient/"):
        problems.append(f"{where}: subject {subject!r} is not a Patient reference")
    tags = [t.get("code") for t in o.get("meta", {}).get("tag", []) if t.get("system") == OSLER_SUMMARY]
    summary = tags == ["edge-summary"]
    if summary:
        # A gateway's window summary: a period, not an instant, and its statistics as
        # components (min, max from FHIR's statistics codes, last from Osler's, count).
        period = o.get("effectivePeriod", {})
        start, end = period.get("start"), period.get("end")
        if not all(isinstance(x, str) and DATETIME.match(x) for x in (start, end)):
            problems.append(f"{where}: effectivePeriod {period!r} needs full start and end date-times")
        if "effectiveDateTime" in o:
            problems.append(f"{where}: a summary with an effectiveDateTime")
        stats = {}
        for i, comp in enumerate(o.get("component", [])):
            for c in comp.get("code", {}).get("coding", []):
                if c.get("system") in (STATISTICS, OSLER_SUMMARY):
                    stats.setdefault(c.get("code"), []).append(comp)
        for needed in ("minimum", "maximum", "last", "count"):
            if needed not in stats:
                problems.append(f"{where}: summary without its {needed} component")
        for comp in stats.get("count", []):
            if not isinstance(comp.get("valueInteger"), int) or comp["valueInteger"] < 1:
                problems.append(f"{where}: count {comp.get('valueInteger')!r} is not a positive integer")
        for code in ("minimum", "maximum", "last"):
            for comp in stats.get(code, []):
                check_quantity(comp.get("valueQuantity"), unit if loinc[0] != "85354-9" else "mm[Hg]", f"{where}.{code}", problems)
        # The statistics are checked; the rest is checked as for a single reading.
        o = dict(o)
        o["component"] = [
            c for c in o.get("component", [])
            if not any(x.get("system") in (STATISTICS, OSLER_SUMMARY) for x in c.get("code", {}).get("coding", []))
        ]
        if not o["component"]:
            del o["component"]
    else:
        when = o.get("effectiveDateTime")
        if not isinstance(when, str) or not DATETIME.match(when):
            problems.append(f"{where}: effectiveDateTime {o.get('effectiveDateTime')!r} is not a full date-time")
    if "device" in o and not o["device"].get("reference", "").startswith("Device/"):
        problems.append(f"{where}: device is not a Device reference")
    if loinc[0] == "85354-9":
        # vs-2/vs-3: a panel carries components, each a UCUM quantity; no top-level value.
        if "valueQuantity" in o:
            problems.append(f"{where}: blood-pressure panel with a top-level value")
        comps = o.get("component", [])
        found = {}
        for i, comp in enumerate(comps):
            codes = codings(comp.get("code", {}), LOINC)
            if len(codes) != 1 or codes[0] not in BP_COMPONENTS:
                problems.append(f"{where}: component[{i}] code {codes}")
                continue
            if codings(comp["code"], MDC) != [BP_COMPONENTS[codes[0]]]:
                problems.append(f"{where}: component[{i}] MDC coding")
            found[codes[0]] = comp
            check_quantity(comp.get("valueQuantity"), "mm[Hg]", f"{where}.component[{i}]", problems)
        if sorted(found) != sorted(BP_COMPONENTS):
            problems.append(f"{where}: components {sorted(found)}, expected systolic and diastolic")
    else:
        if "component" in o:
            problems.append(f"{where}: unexpected components")
        check_quantity(o.get("valueQuantity"), unit, where, problems)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    with open(sys.argv[1]) as f:
        resources = json.load(f)
    problems = []
    kinds = {}
    for i, r in enumerate(resources):
        kind = r.get("resourceType")
        where = f"[{i}] {kind}/{r.get('id', '')}"
        kinds[kind] = kinds.get(kind, 0) + 1
        try:
            get_fhir_model_class(kind).model_validate(r)
        except Exception as e:  # noqa: BLE001 - report any validation failure
            problems.append(f"{where}: fhir.resources R4B: {e}")
            continue
        if kind == "Observation":
            check_observation(r, where, problems)
        if kind == "Bundle":
            for j, e in enumerate(r.get("entry", [])):
                res = e.get("resource")
                if res and res.get("resourceType") == "Observation":
                    check_observation(res, f"{where}.entry[{j}]", problems)
    for p in problems:
        print(p)
    print(f"validated {len(resources)} resources {kinds}: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
