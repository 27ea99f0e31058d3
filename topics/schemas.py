"""The JSON Schema of each record kind, generated from its type: docs/records/*.schema.json
(tools/records_schema.py writes them; tests/test_records_schema.py keeps them in step).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from topics.clicks import ClickBatch, ClickBatchBots, ClickReport
from topics.links import LinkRecord
from topics.replicas import ReplicaStatus


def json_schemas() -> dict[str, dict]:
    """Each record kind's JSON Schema (draft 2020-12, as msgspec generates it), by file stem:
    what docs/records/<stem>.schema.json holds."""
    active = {"properties": {"state": {"const": "active"}}}
    link_rules = {
        "$comment": "Key: the tinyurl (UTF-8), equal to the value's tinyurl. An active link's "
                    "longurl must also be servable as it is (topics/longurls.py).",
        "if": active,
        "then": {"required": ["longurl"], "properties": {"longurl": {"type": "string"}}},
        "else": {"properties": {"longurl": {"type": "null"}}},
    }
    kinds = {
        "links-record": Annotated[LinkRecord, Meta(extra_json_schema=link_rules)],
        "click-report": Annotated[ClickReport, Meta(extra_json_schema={
            "$comment": "Key: <incarnation>:<tinyurl> (UTF-8), equal to the value's. Schema 2: "
                        "replicas now send click-batch-bots records (schema 4); the master reads "
                        "all three."})],
        "click-batch": Annotated[ClickBatch, Meta(extra_json_schema={
            "$comment": "Key: <incarnation>/<32 lowercase hex digits> (UTF-8), the incarnation "
                        "equal to the value's, the digits unique per record. A tinyurl named "
                        "twice counts as its largest count; one bad pair rejects the whole "
                        "record. Schema 3: replicas now send click-batch-bots records (schema "
                        "4); the master reads both."})],
        "click-batch-bots": Annotated[ClickBatchBots, Meta(extra_json_schema={
            "$comment": "Key: as click-batch's. Each counter's bots are at most its count; a "
                        "tinyurl named twice counts as its largest count and its largest bots; "
                        "one bad triple rejects the whole record."})],
        "replica-status": Annotated[ReplicaStatus, Meta(extra_json_schema={
            "$comment": "Key: the node (UTF-8), equal to the value's node."})],
    }
    schemas = {}
    for stem, kind in kinds.items():
        schema = msgspec.json.schema(kind)
        for definition in schema["$defs"].values():  # docstrings, without their line breaks
            definition["description"] = " ".join(definition["description"].split())
        schemas[stem] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return schemas
