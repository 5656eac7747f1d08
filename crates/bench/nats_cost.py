"""What nats-server spends per task message, by what the message and the stream carry.

Starts its own nats-server (the one scripts/lib.sh installs, or NATS_SERVER_BIN) on 127.0.0.1,
publishes N messages shaped like workhook's (1 KiB body, 64 in flight, waiting for each PubAck)
under six setups, from the ceiling's (one subject, no headers, no consumer) to workhook's, and
prints nats-server's CPU per message (utime + stime from /proc). A single Python publisher is
slower than the ingress, so compare the rows with each other, not with scripts/bench.

    python3 -m venv /tmp/pyn && /tmp/pyn/bin/pip install nats-py
    /tmp/pyn/bin/python crates/bench/nats_cost.py        # N=40000 by default
    PREFILL=300000 /tmp/pyn/bin/python crates/bench/nats_cost.py

ROWS picks the setups by key (default: all, "A B C D' Db D Dt Dh E Eh F"). PREFILL first stores that many messages of the same shape (published without waiting for
PubAcks, not measured), as a burst leaves them queued: what nats-server keeps per subject grows
with the number of distinct subjects stored, and so does its cost per message.
"""
import asyncio, os, time, json, subprocess, shutil, tempfile, hashlib
import nats
from nats.js.api import StreamConfig, ConsumerConfig, RetentionPolicy, StorageType, AckPolicy

BIN = os.environ.get("NATS_SERVER_BIN", os.path.expanduser("~/.cache/workhook-venv/bin/nats-server"))
N = int(os.environ.get("N", "40000"))
PREFILL = int(os.environ.get("PREFILL", "0"))
HZ = os.sysconf("SC_CLK_TCK")

def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return int(f[11]) + int(f[12])

REQ = json.dumps({"method": "POST", "query": "", "content_type": "application/json",
                  "headers": {"user-agent": "GitHub-Hookshot/abc", "x-github-event": "push",
                              "content-type": "application/json", "accept": "*/*",
                              "x-github-hook-id": "123456", "content-length": "1024"}})

async def run(name, retention, consumers, headers, unique, msgid):
    d = tempfile.mkdtemp(prefix="nats-cost-")
    p = subprocess.Popen([BIN, "-js", "-a", "127.0.0.1", "-p", "14888", "-sd", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(1.0)
    nc = await nats.connect("nats://127.0.0.1:14888")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["wh.tasks.>"], retention=retention, storage=StorageType.FILE))
    for c in consumers:
        await js.add_consumer("T", ConsumerConfig(durable_name=c[0], filter_subject=c[1], ack_policy=AckPolicy.EXPLICIT, max_ack_pending=200000))
    body = b"x" * 1024
    proj, code = "p" * 24, "c" * 24
    sem = asyncio.Semaphore(64)
    def headers_of(i):
        h = {}
        if headers:
            h["Workhook-Task"] = "1 %024x %s %s 1 1 3600 0 1764547200000 webhook 0 w default" % (i, proj, code)
            if headers != "task":
                h["Workhook-Request-Json"] = REQ
        if msgid:
            h["Nats-Msg-Id"] = task_id(i)
        return h or None
    def task_id(i):
        # "seq": ids made one after the other share all but their last characters, as
        # workhook's fresh ids do (ObjectId-like, since round 8); "hash": ids that share nothing,
        # as a delivery id's hash does; "timed": seconds, then a random tail, as fresh ids were
        # before round 8.
        if unique == "timed":
            # 4 bytes of seconds (about 20,000 tasks a second), then a random tail.
            return "%08x" % (1764547200 + i // 20000) + hashlib.sha256(b"%d" % i).hexdigest()[:16]
        if unique == "hash":
            return hashlib.sha256(b"%d" % i).hexdigest()[:24]
        return f"{i:024x}"
    def subject_of(i):
        if unique == "bucket":
            # workhook's subjects since round 9: the id's last 3 hex characters (4,096 buckets).
            return f"wh.tasks.p1.{proj}.{code}.{task_id(i)[-3:]}"
        if unique == "bucket2":
            return f"wh.tasks.p1.{proj}.{code}.{task_id(i)[-2:]}"
        return f"wh.tasks.p1.{proj}.{code}" + (f".{task_id(i)}" if unique else "")
    async def one(i):
        async with sem:
            await js.publish(subject_of(i), body, headers=headers_of(i))
    for i in range(20_000_000, 20_000_000 + PREFILL):
        await nc.publish(subject_of(i), body, headers=headers_of(i))
        if i % 2000 == 0:
            await nc.flush()
    await nc.flush()
    # warm-up
    await asyncio.gather(*(one(10_000_000 + i) for i in range(2000)))
    t0 = ticks(p.pid); w0 = time.time()
    await asyncio.gather(*(one(i) for i in range(N)))
    t1 = ticks(p.pid); w1 = time.time()
    rss = int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
    print(f"{name:55s} nats-server {1e6*(t1-t0)/HZ/N:5.1f} us/msg  ({N/(w1-w0):.0f} msg/s, RSS {rss} MiB)", flush=True)
    await nc.close()
    p.terminate(); p.wait()
    shutil.rmtree(d, ignore_errors=True)

async def main():
    runners = [("runners-p2", "wh.tasks.p2.>"), ("runners-p1", "wh.tasks.p1.>"), ("runners-p0", "wh.tasks.p0.>")]
    rec_delayed = [("recorder", "wh.tasks.delayed.>")]
    rec_all = [("recorder", "wh.tasks.>")]
    L, I = RetentionPolicy.LIMITS, RetentionPolicy.INTEREST
    rows = {
        "A": ("A limits, no consumers, no headers, one subject", L, [], False, False, False),
        "B": ("B + workhook headers", L, [], True, False, False),
        "B1": ("B1 + the task header alone (no request JSON)", L, [], "task", False, False),
        "C": ("C + a subject per task", L, [], True, "seq", False),
        "D'": ("D' as D, but one subject (no subject per task)", I, runners + rec_delayed, True, False, False),
        "D": ("D + interest, 3 runner consumers + recorder(delayed)", I, runners + rec_delayed, True, "seq", False),
        "Db": ("Db as D, the subject ends in the id's last 3 characters", I, runners + rec_delayed, True, "bucket", False),
        "Db2": ("Db2 as Db, the last 2 characters (256 buckets)", I, runners + rec_delayed, True, "bucket2", False),
        "Dt": ("Dt as D, ids of seconds and a random tail (before round 8)", I, runners + rec_delayed, True, "timed", False),
        "Dh": ("Dh as D, task ids that share no prefix (hashes)", I, runners + rec_delayed, True, "hash", False),
        "E": ("E  D + Nats-Msg-Id", I, runners + rec_delayed, True, "seq", True),
        "Eh": ("Eh E with hashed ids (a delivery id's task)", I, runners + rec_delayed, True, "hash", True),
        "F": ("F  before: per-code subject, recorder on all, msg id", I, runners + rec_all, True, False, True),
    }
    wanted = os.environ.get("ROWS", "A B C D' Db D Dt Dh E Eh F").split()
    for rep in range(2):
        for key in wanted:
            await run(*rows[key])

asyncio.run(main())
