# Says it is running, then idles, so that its memory can be read from /proc.
import time

print("ready", flush=True)
time.sleep(0.5)
