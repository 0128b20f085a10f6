# json dumps/loads round trips of a nested document.
import json
import sys

doc = {
    "users": [
        {"id": i, "name": f"user{i}", "tags": ["a", "b", "c"], "score": i * 1.5, "active": i % 2 == 0}
        for i in range(200)
    ],
    "meta": {"version": 3, "note": "caf\u00e9 \u2603"},
}
total = 0
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 300):
    text = json.dumps(doc)
    total += len(json.loads(text)["users"])
print(total)
