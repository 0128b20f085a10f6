# Dicts, strings and sorting: everyday Python.
import sys

words = [f"w{(i * 7919) % 5003}" for i in range(20000)]
result = 0
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 20):
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    result += sum(len(k) * v for k, v in top) + len(" ".join(words).upper().split("W1"))
print(result)
