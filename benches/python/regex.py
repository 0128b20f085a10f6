# Regular expressions over a generated log.
import re
import sys

lines = [f"2024-01-{d:02d} 12:{m:02d}:00 host{d % 7}.example.org GET /item/{d * m} 200 {d * m * 13}"
         for d in range(1, 29) for m in range(60)]
text = "\n".join(lines)
pattern = re.compile(r"^(\d{4})-(\d\d)-(\d\d) .* (host\d)\.example\.org GET /item/(\d+) (\d{3}) (\d+)$", re.M)
count = 0
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 40):
    count += sum(int(m.group(7)) % 10 for m in pattern.finditer(text))
    count += len(re.findall(r"host[0-3]\.", text))
print(count)
