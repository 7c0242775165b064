"""JSON schemas that guided-decoding tests on both engines share."""

# Lists without bound: a random model would fill any token cap with either.
UNBOUNDED_LISTS = {
    "strings": {"type": "array", "items": {"type": "string"}},
    # objects with required fields: a token such as `},{` closes an item only to open the next
    "objects": {"type": "array", "items": {"type": "object", "properties": {
        "task": {"type": "string"}, "done": {"type": "boolean"}}, "required": ["task", "done"]}},
}


def unbounded_list(items: str) -> dict:
    """An object whose one required field is the UNBOUNDED_LISTS list named `items`."""
    return {"type": "object", "properties": {"items": UNBOUNDED_LISTS[items]}, "required": ["items"],
            "additionalProperties": False}
