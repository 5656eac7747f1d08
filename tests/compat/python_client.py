#!/usr/bin/env python3
"""Drives IronWorker's official Python client, PyPI iron-worker 1.3.8 over iron-core 1.2.1, against
a live workhook. Run it with the venv that tests/compat/setup installs:

    WORKHOOK_COMPAT_PORT=8080 WORKHOOK_COMPAT_PROJECT_ID=... WORKHOOK_COMPAT_TOKEN=... \
        ~/.cache/workhook-compat/venv/bin/python tests/compat/python_client.py

Env: WORKHOOK_COMPAT_HOST (127.0.0.1), WORKHOOK_COMPAT_PORT (8080), WORKHOOK_COMPAT_PROJECT_ID,
WORKHOOK_COMPAT_TOKEN (required), WORKHOOK_COMPAT_TIMEOUT (whole run, seconds, 180),
WORKHOOK_COMPAT_KEEP_GOING=1 (run every step and report all failures instead of stopping at the
first one; the exit status is non-zero either way).

Each step prints `ok <step>`. A failure prints `FAIL <step>: <what> -> <the server's answer>`
and the run exits non-zero. Names carry a random suffix, so runs do not collide.

What the client offers (class IronWorker in iron_worker.py) and where it is covered:
  upload(target, name, executable) / postCode(code)  POST codes (multipart)   upload, upload_revision,
                                                                              sh_code
  codes()                              GET codes                              codes_list
  code(id)                             GET codes/{id}                         code_info, code_delete
  revisions(id)                        GET codes/{id}/revisions               code_revisions
  download(id, rev, destination)       GET codes/{id}/download?revision=N     code_download (*)
  deleteCode(id)                       DELETE codes/{id}                      code_delete, cleanup
  queue(task | tasks | **kw)           POST tasks                             queue, queue_bulk,
                                                                              queue_delayed, queue_error
  queue(start_at/run_every/...)        POST schedules                         schedule_create,
                                                                              schedule_runs
  task(id)                             GET tasks/{id}                         task_info and most steps
  task(id, scheduled=True)             GET schedules/{id}                     schedule_info
  log(id), wait_for_task_log(task)     GET tasks/{id}/log                     log
  stdout(id), wait_for_task_stdout     GET tasks/{id}/outlog                  stdout
  tasks(page, per_page, code_name, queued/running/complete/error/cancelled/killed/timeout,
        from_time, to_time)            GET tasks?...                          list_tasks
  tasks(scheduled=True, page, per_page) GET schedules?...                     schedule_list
  tasks_by_code_name(name)             GET tasks?code_name=                   tasks_by_code_name
  setProgress(id, percent, msg)        POST tasks/{id}/progress               set_progress
  retry(id, delay)                     POST tasks/{id}/retry                  retry
  cancel(id)                           POST tasks/{id}/cancel                 cancel
  cancel(id, scheduled=True)           POST schedules/{id}/cancel             schedule_cancel
  run(**kw)                            queue(sync=True), wait, outlog         run
  wait_for_task(task)                  GET tasks/{id} until done              wait_for_task
  worker side: IronWorker.payload(), config(), task_id(), task_dir() (argv -payload/-config/-id/-d
        and env PAYLOAD_FILE/CONFIG_FILE/TASK_ID/TASK_DIR)                    worker_helpers
  (*) download() is broken in the client itself: after a 2xx it calls resp["resp"].getheader(),
      which a requests.Response does not have, so it raises AttributeError whatever the server
      answers. The step accepts exactly that error, then checks the same request's answer itself.
The client lacks (so nothing here covers): code stats, pause/resume_task_queue, cancel_all,
schedule update (PUT schedules/{id}), the webhook, task paging by label, code upload with
command/image/env_vars/config/retries (it sends only name, runtime and file_name).
"""

import datetime
import json
import os
import re
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
import traceback
import uuid

import requests
from requests.exceptions import HTTPError

from iron_worker import CodePackage, IronWorker, Task

HOST = os.environ.get("WORKHOOK_COMPAT_HOST", "127.0.0.1")
PORT = int(os.environ.get("WORKHOOK_COMPAT_PORT", "8080"))
PROJECT_ID = os.environ.get("WORKHOOK_COMPAT_PROJECT_ID", "")
TOKEN = os.environ.get("WORKHOOK_COMPAT_TOKEN", "")
RUN_TIMEOUT = int(os.environ.get("WORKHOOK_COMPAT_TIMEOUT", "180"))
KEEP_GOING = os.environ.get("WORKHOOK_COMPAT_KEEP_GOING", "") not in ("", "0")

SUFFIX = uuid.uuid4().hex[:8]
NAME = "compat-py-" + SUFFIX
HEX24 = re.compile(r"^[0-9a-f]{24}$")
IN_PROGRESS = ("queued", "preparing", "running")


class CheckFailed(Exception):
    pass


class Blocked(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def check_id(value, what):
    check(isinstance(value, str) and HEX24.match(value), "%s is not 24 hex characters: %r" % (what, value))


def describe(e):
    """What failed, with the server's answer when there was one."""
    if isinstance(e, HTTPError) and e.response is not None:
        r = e.response
        req = r.request
        url = req.url.split("://", 1)[-1].split("/", 1)[-1] if req is not None else "?"
        url = "/" + url
        return "%s %s -> HTTP %d (%s) %s" % (
            req.method if req is not None else "?", url, r.status_code,
            r.headers.get("Content-Type"), r.text[:600])
    if isinstance(e, (CheckFailed, Blocked)):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = "; ".join("%s:%d %s" % (os.path.basename(f.filename), f.lineno, f.name) for f in tb[-3:])
    return "%s: %s (at %s)" % (type(e).__name__, e, where)


state = {}
failures = []
passed = []


def finish():
    os.chdir("/")
    if "workdir" in globals():
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print("%d step(s) failed: %s" % (len(failures), " ".join(failures)))
    print("python_client: %d passed, %d failed" % (len(passed), len(failures)), flush=True)
    sys.exit(1 if failures else 0)


def need(*keys):
    for k in keys:
        if k not in state:
            raise Blocked("needs %s from an earlier step that failed" % k)
    return [state[k] for k in keys] if len(keys) > 1 else state[keys[0]]


def step(name):
    def run(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            line = "FAIL %s: %s" % (name, describe(e))
            print(line, flush=True)
            failures.append(name)
            if not KEEP_GOING:
                finish()
        else:
            passed.append(name)
            print("ok %s" % name, flush=True)
        return fn
    return run


def poll(fetch, done, what, timeout=60):
    deadline = time.time() + timeout
    delay = 0.2
    while True:
        value = fetch()
        if done(value):
            return value
        if time.time() > deadline:
            raise CheckFailed("timed out after %ds waiting for %s; last: %r" % (timeout, what, value))
        time.sleep(delay)
        delay = min(delay * 1.5, 2)


def wait_done(task_id, timeout=60):
    return poll(lambda: worker.task(task_id), lambda t: t.status not in IN_PROGRESS,
                "task %s to finish" % task_id, timeout)


def check_task(t, task_id, code_name):
    """The fields the client parses into its Task, as IronWorker sent them."""
    check(t.id == task_id, "task id %r, wanted %r" % (t.id, task_id))
    check_id(t.id, "task id")
    check(t.code_name == code_name, "code_name %r, wanted %r" % (t.code_name, code_name))
    # (Task keeps no project_id: its alias map points "project" -> "project_id", backwards.)
    check_id(t.code_id, "code_id")
    check_id(t.code_history_id, "code_history_id")
    check(isinstance(t.code_rev, str) and t.code_rev.isdigit(), "code_rev is not a numeric string: %r" % (t.code_rev,))
    check(t.status in ("queued", "preparing", "running", "complete", "error", "cancelled", "killed", "timeout"),
          "unknown status %r" % (t.status,))
    # The client parses these with dateutil; a bad time string raises in Task().
    check(isinstance(t.created_at, datetime.datetime), "created_at not parsed: %r" % (t.created_at,))
    check(isinstance(t.updated_at, datetime.datetime), "updated_at not parsed: %r" % (t.updated_at,))
    # Any of start_at, end_at, next_start, last_run_time, run_count, run_every in a task's JSON (even
    # null) makes the client treat it as a schedule: log() then refuses, cancel() and task() go to
    # /schedules/{id}.
    check(not t.scheduled, "the client reads task %s as a schedule (a schedule field is in its JSON)" % t.id)
    # wait_for_task() does `task.timeout + 15`: the timeout must be a number.
    check(isinstance(t.timeout, (int, float)), "timeout is not a number: %r" % (t.timeout,))


def task_ids(tasks):
    return [t.id for t in tasks]


def alarm(signum, frame):
    print("FAIL timeout: the run took longer than %ds (a call hung?)" % RUN_TIMEOUT, flush=True)
    traceback.print_stack(frame, file=sys.stdout)
    print("python_client: %d passed, %d failed" % (len(passed), len(failures) + 1), flush=True)
    os._exit(1)


if not PROJECT_ID or not TOKEN:
    sys.exit("set WORKHOOK_COMPAT_PROJECT_ID and WORKHOOK_COMPAT_TOKEN (and WORKHOOK_COMPAT_PORT)")
signal.signal(signal.SIGALRM, alarm)
signal.alarm(RUN_TIMEOUT)

# The client writes "<name>.zip" into the working directory and reads ./iron.json: work in a
# directory of our own.
workdir = tempfile.mkdtemp(prefix="workhook-compat-py-")
os.chdir(workdir)
os.makedirs("src")
SITE = sysconfig.get_paths()["purelib"]
with open("src/hello.py", "w") as f:
    f.write('''import json, os, sys, time
payload = open(os.environ["PAYLOAD_FILE"]).read()
print("payload: " + payload)
sys.stderr.write("stderr-marker\\n")
try:
    p = json.loads(payload)
except ValueError:
    p = {}
if not isinstance(p, dict):
    p = {}
try:
    sys.path.insert(0, %r)
    from iron_worker import IronWorker
    print("helper: " + json.dumps({"payload": IronWorker.payload(), "task_id": IronWorker.task_id(),
                                   "dir": IronWorker.task_dir()}))
except Exception as e:
    print("helper-unavailable: %%r" %% (e,))
sys.stdout.flush()
time.sleep(p.get("sleep", 0))
sys.exit(p.get("exit", 0))
''' % SITE)
with open("src/hello.sh", "w") as f:
    f.write('echo "sh payload: $(cat "$PAYLOAD_FILE")"\n')

worker = IronWorker(project_id=PROJECT_ID, token=TOKEN, host=HOST, port=PORT, protocol="http")
check(worker.client.base_url == "http://%s:%s/2/projects/%s/" % (HOST, PORT, PROJECT_ID),
      "client base_url %r" % worker.client.base_url)
started = int(time.time())


# ---------------------------------------------------------------- code packages

@step("upload")
def _():
    # A single file: the package holds hello.py and the client sends runtime "python",
    # file_name "hello.py" (the server runs `python3 hello.py`).
    code = worker.upload("src/hello.py", name=NAME)
    check(isinstance(code, CodePackage), "upload returned %r" % (code,))
    check_id(code.id, "uploaded code id")
    check(not os.path.exists(NAME + ".zip"), "the client left its zip behind")
    state["code_id"] = code.id


@step("codes_list")
def _():
    code_id = need("code_id")
    codes = worker.codes()
    mine = [c for c in codes if c.name == NAME]
    if not mine and len(codes) >= 30:
        # codes() asks for the first page only; a busy project pushes us further.
        page = 1
        while not mine and page < 20:
            raw = worker.client.get("codes?page=%d&per_page=100" % page)["body"]["codes"]
            mine = [CodePackage(c) for c in raw if c["name"] == NAME]
            if not raw:
                break
            page += 1
    check(len(mine) == 1, "code %s listed %d times" % (NAME, len(mine)))
    c = mine[0]
    check(c.id == code_id, "listed id %r, uploaded %r" % (c.id, code_id))
    check(c.project == PROJECT_ID, "listed project_id %r" % (c.project,))
    check(c.revision == 1, "listed rev %r, wanted 1" % (c.revision,))
    check(isinstance(c.latest_change, datetime.datetime), "latest_change %r" % (c.latest_change,))


@step("code_info")
def _():
    code_id = need("code_id")
    c = worker.code(code_id)
    check(c.id == code_id and c.name == NAME, "code info id/name %r/%r" % (c.id, c.name))
    check(c.revision == 1, "rev %r, wanted 1" % (c.revision,))
    check(c.project == PROJECT_ID, "project_id %r" % (c.project,))
    check_id(c.latest_history_id, "latest_history_id")


@step("upload_revision")
def _():
    code_id = need("code_id")
    code = worker.upload("src/hello.py", name=NAME)
    check_id(code.id, "re-uploaded code id")
    check(code.id == code_id, "re-upload answered id %r, the code's id is %r" % (code.id, code_id))
    codes = [c for c in worker.codes() if c.name == NAME]
    if codes:
        check(codes[0].revision == 2, "listed rev %r after the second upload" % (codes[0].revision,))
    state["rev2"] = True


@step("code_revisions")
def _():
    code_id = need("code_id", "rev2")[0]
    revs = worker.revisions(code_id)
    check(len(revs) == 2, "%d revisions, wanted 2: %r" % (len(revs), [vars(r) for r in revs]))
    check(sorted(r.revision for r in revs) == [1, 2], "revisions %r" % ([r.revision for r in revs],))
    for r in revs:
        check_id(r.id, "revision id")


@step("code_download")
def _():
    code_id = need("code_id")
    dest = os.path.join(workdir, "download.zip")
    try:
        worker.download(code_id, rev=1, destination=dest)
    except AttributeError as e:
        check("getheader" in str(e), "download: %s" % e)  # the client's own bug, see the top
    # The same request as the client's, checked here since the client cannot finish it.
    url = worker.client.base_url + "codes/%s/download?revision=1" % code_id
    r = requests.get(url, headers={"Authorization": "OAuth " + TOKEN, "Accept": "application/json"})
    r.raise_for_status()
    check(r.headers.get("Content-Type", "").startswith("application/zip"),
          "download Content-Type %r" % r.headers.get("Content-Type"))
    check(r.content[:2] == b"PK", "download body is not a zip: %r" % r.content[:40])
    cd = r.headers.get("Content-Disposition", "")
    check("filename=" in cd and cd.rstrip('"').endswith(".zip"), "Content-Disposition %r" % cd)


# ---------------------------------------------------------------- tasks

@step("queue")
def _():
    need("code_id")
    mark = "py-" + uuid.uuid4().hex
    t = worker.queue(code_name=NAME, payload={"hello": mark, "sleep": 3}, priority=1, timeout=120,
                     delay=0, label="compat-" + SUFFIX)
    check(isinstance(t, Task), "queue returned %r" % (t,))
    check_id(t.id, "queued task id")
    state.update(task_id=t.id, mark=mark)


@step("task_info")
def _():
    task_id, code_id = need("task_id", "code_id")
    t = worker.task(task_id)
    check_task(t, task_id, NAME)
    check(t.code_id == code_id, "code_id %r, the code is %r" % (t.code_id, code_id))
    check(t.code_rev == "2", "code_rev %r, wanted \"2\"" % (t.code_rev,))
    check(t.priority == 1, "priority %r" % (t.priority,))
    check(t.timeout == 120, "timeout %r" % (t.timeout,))
    check(t.label == "compat-" + SUFFIX, "label %r" % (t.label,))
    check(t.payload == {"hello": state["mark"], "sleep": 3}, "payload %r" % (t.payload,))


@step("set_progress")
def _():
    task_id = need("task_id")
    poll(lambda: worker.task(task_id).status, lambda s: s != "queued" and s != "preparing",
         "task %s to start" % task_id, 30)
    body = worker.setProgress(task_id, 50, "halfway")
    check(isinstance(body, dict) and "msg" in body, "progress answered %r" % (body,))
    t = worker.task(task_id)
    check(t.percent == 50, "percent %r after setting 50" % (t.percent,))


@step("wait_for_task")
def _():
    task_id = need("task_id")
    t = worker.wait_for_task(worker.task(task_id))
    check(t.status == "complete", "status %r, msg %r" % (t.status, t.message))
    # The client keeps start_time/end_time as sent (it never converts its "timestamp" attributes).
    for name in ("start_time", "end_time"):
        v = getattr(t, name)
        check(isinstance(v, str) and not v.startswith("0001-"), "%s %r on a complete task" % (name, v))
    state["complete_id"] = task_id


@step("log")
def _():
    task_id, mark = need("complete_id", "mark")
    log = worker.wait_for_task_log(task_id)
    check(isinstance(log, str), "log is %r, not text" % (type(log),))
    check(mark in log, "payload mark %s not in the log: %r" % (mark, log[:500]))
    check("stderr-marker" in log, "stderr not in the log: %r" % log[:500])
    state["log"] = log


@step("stdout")
def _():
    task_id, mark = need("complete_id", "mark")
    out = worker.stdout(task_id)
    check(isinstance(out, str) and mark in out, "payload mark not in outlog: %r" % (out,))
    check("stderr-marker" not in out, "outlog holds stderr: %r" % out[:500])


@step("worker_helpers")
def _():
    log, task_id, mark = need("log", "complete_id", "mark")
    if "helper-unavailable" in log:
        # The worker could not import the venv's iron_worker (a runner on another machine).
        print("skip worker_helpers: %s" % log.split("helper-unavailable:", 1)[1].splitlines()[0])
        return
    line = [l for l in log.splitlines() if l.startswith("helper: ")]
    check(line, "no helper line in the log: %r" % log[:500])
    got = json.loads(line[0][len("helper: "):])
    check(got["payload"] == {"hello": mark, "sleep": 3}, "IronWorker.payload() %r" % (got["payload"],))
    check(got["task_id"] == task_id, "IronWorker.task_id() %r" % (got["task_id"],))
    check(got["dir"], "IronWorker.task_dir() %r" % (got["dir"],))


@step("run")
def _():
    need("code_id")
    mark = "py-run-" + uuid.uuid4().hex
    out = worker.run(code_name=NAME, payload={"hello": mark})
    check(isinstance(out, str) and mark in out, "run() returned %r" % (out,))


@step("queue_error")
def _():
    need("code_id")
    t = worker.queue(code_name=NAME, payload={"exit": 3})
    t = wait_done(t.id)
    check(t.status == "error", "status %r for a worker that exits 3" % (t.status,))
    state["error_id"] = t.id


@step("retry")
def _():
    error_id = need("error_id")
    body = worker.retry(error_id)  # the client's default delay is 1 s
    check(isinstance(body, dict) and isinstance(body.get("tasks"), list) and body["tasks"],
          "retry answered %r" % (body,))
    new_id = body["tasks"][0].get("id")
    check_id(new_id, "retried task id")
    check(new_id != error_id, "retry kept the id %s" % new_id)
    t = worker.task(new_id)
    check_task(t, new_id, NAME)
    t = wait_done(new_id)
    check(t.status == "error", "the retried task ended %r" % (t.status,))
    state["retry_id"] = new_id


@step("queue_bulk")
def _():
    need("code_id")
    tasks = worker.queue(tasks=[Task(code_name=NAME, payload={"n": 1}), Task(code_name=NAME, payload="two")])
    check(isinstance(tasks, list) and len(tasks) == 2, "bulk queue returned %r" % (tasks,))
    ids = task_ids(tasks)
    for i in ids:
        check_id(i, "bulk task id")
    check(ids[0] != ids[1], "bulk ids equal")
    state["bulk_ids"] = ids


@step("queue_delayed")
def _():
    need("code_id")
    t = worker.queue(code_name=NAME, payload={"later": True}, delay=60)
    t = worker.task(t.id)
    check(t.status == "queued", "a task delayed 60 s is %r" % (t.status,))
    check(t.delay == 60, "delay %r" % (t.delay,))
    state["delayed_id"] = t.id


@step("list_tasks")
def _():
    complete_id, error_id, delayed_id = need("complete_id", "error_id", "delayed_id")
    everything = worker.tasks(code_name=NAME, per_page=100)
    for i in (complete_id, error_id, delayed_id):
        check(i in task_ids(everything), "task %s missing from tasks(code_name=...)" % i)
    for t in everything:
        check(t.code_name == NAME, "tasks(code_name=%s) listed %r" % (NAME, t.code_name))
        check_id(t.id, "listed task id")
    complete = worker.tasks(code_name=NAME, complete=True)
    check(complete_id in task_ids(complete), "complete=1 lacks %s" % complete_id)
    check(all(t.status == "complete" for t in complete), "complete=1 listed %r" % [t.status for t in complete])
    errors = worker.tasks(code_name=NAME, error=True)
    check(error_id in task_ids(errors) and complete_id not in task_ids(errors), "error=1 listed %r" % task_ids(errors))
    queued = worker.tasks(code_name=NAME, queued=True)
    check(delayed_id in task_ids(queued), "queued=1 lacks the delayed task %s" % delayed_id)
    either = task_ids(worker.tasks(code_name=NAME, queued=True, error=True))
    check(delayed_id in either and error_id in either and complete_id not in either,
          "queued=1&error=1 listed %r" % either)
    recent = task_ids(worker.tasks(code_name=NAME, from_time=started - 5))
    check(complete_id in recent, "from_time lacks %s" % complete_id)
    old = worker.tasks(code_name=NAME, to_time=started - 3600)
    check(not old, "to_time an hour back listed %r" % task_ids(old))
    first = worker.tasks(code_name=NAME, per_page=1)
    second = worker.tasks(code_name=NAME, page=1, per_page=1)
    check(len(first) == 1 and len(second) == 1 and first[0].id != second[0].id,
          "paging per_page=1: page 0 %r, page 1 %r" % (task_ids(first), task_ids(second)))


@step("tasks_by_code_name")
def _():
    complete_id = need("complete_id")
    ids = task_ids(worker.tasks_by_code_name(NAME))
    check(complete_id in ids, "tasks_by_code_name lacks %s: %r" % (complete_id, ids))


@step("cancel")
def _():
    delayed_id = need("delayed_id")
    check(worker.cancel(delayed_id) is True, "cancel did not return True")
    t = worker.task(delayed_id)
    check(t.status == "cancelled", "status %r after cancel" % (t.status,))
    check(delayed_id in task_ids(worker.tasks(code_name=NAME, cancelled=True)), "cancelled=1 lacks %s" % delayed_id)


# ---------------------------------------------------------------- schedules

@step("schedule_create")
def _():
    need("code_id")
    start = datetime.datetime.now() + datetime.timedelta(hours=1)  # naive: the client adds tzlocal()
    s = worker.queue(code_name=NAME, payload={"scheduled": SUFFIX}, start_at=start, run_every=3600,
                     run_times=5, priority=2, timeout=60, label="compat-sched-" + SUFFIX)
    check(isinstance(s, Task) and s.scheduled, "schedule create returned %r" % (s,))
    check_id(s.id, "schedule id")
    state.update(schedule_id=s.id, schedule_start=start)


@step("schedule_info")
def _():
    sid, start = need("schedule_id", "schedule_start")
    s = worker.task(sid, scheduled=True)
    check(s.id == sid and s.code_name == NAME, "schedule id/code_name %r/%r" % (s.id, s.code_name))
    # The client knows a schedule by one of its fields (start_at, next_start, run_every, ...); without
    # them cancel(schedule) would go to /tasks/{id}/cancel.
    check(s.scheduled, "the client does not read %s as a schedule" % sid)
    check(s.status == "scheduled", "schedule status %r" % (s.status,))
    check(s.run_every == 3600, "run_every %r" % (s.run_every,))
    check(s.run_times == 5, "run_times %r" % (s.run_times,))
    check(s.priority == 2, "priority %r" % (s.priority,))
    check(s.payload == {"scheduled": SUFFIX}, "payload %r" % (s.payload,))
    check(isinstance(s.start_at, datetime.datetime), "start_at %r" % (s.start_at,))
    local = start.replace(tzinfo=datetime.datetime.now().astimezone().tzinfo)
    check(abs((s.start_at - local).total_seconds()) < 2, "start_at %r, sent %r" % (s.start_at, local))
    check(isinstance(s.created_at, datetime.datetime), "created_at %r" % (s.created_at,))


@step("schedule_list")
def _():
    sid = need("schedule_id")
    found, page = None, 0
    while found is None and page < 20:
        batch = worker.tasks(scheduled=True, page=page, per_page=100)
        found = next((s for s in batch if s.id == sid), None)
        if len(batch) < 100:
            break
        page += 1
    check(found is not None, "schedule %s not listed" % sid)
    check(found.code_name == NAME and found.run_every == 3600, "listed %r" % (vars(found),))


@step("schedule_cancel")
def _():
    sid = need("schedule_id")
    s = worker.task(sid, scheduled=True)
    check(worker.cancel(s) is True, "cancel did not return True")  # a scheduled Task: schedules/{id}/cancel
    s = worker.task(sid, scheduled=True)
    check(s.status == "cancelled", "schedule status %r after cancel" % (s.status,))


@step("schedule_runs")
def _():
    need("code_id")
    start = datetime.datetime.now() + datetime.timedelta(seconds=2)
    s = worker.queue(code_name=NAME, payload={"from": "schedule"}, start_at=start, run_times=1)
    check_id(s.id, "schedule id")
    spawned = poll(lambda: [t for t in worker.tasks(code_name=NAME, per_page=100) if t.schedule_id == s.id],
                   lambda ts: ts, "schedule %s to queue a task" % s.id, 90)
    check(len(spawned) == 1, "a run_times=1 schedule queued %d tasks" % len(spawned))
    t = wait_done(spawned[0].id)
    check_task(t, spawned[0].id, NAME)
    check(t.schedule_id == s.id, "schedule_id %r in the task's info" % (t.schedule_id,))
    check(t.status == "complete", "the scheduled task ended %r" % (t.status,))
    info = poll(lambda: worker.task(s.id, scheduled=True), lambda x: x.status != "scheduled",
                "schedule %s to complete" % s.id, 30)
    check(info.status == "complete" and info.run_count == 1,
          "schedule status %r run_count %r" % (info.status, info.run_count))


# ---------------------------------------------------------------- a shell code, deleting codes

@step("sh_code")
def _():
    code = CodePackage(name=NAME + "-sh", runtime="sh")
    code.merge("src/hello.sh")  # a single file: the executable is hello.sh
    uploaded = worker.upload(code)
    check_id(uploaded.id, "sh code id")
    state["sh_code_id"] = uploaded.id
    out = worker.run(code_name=NAME + "-sh", payload="plain text " + SUFFIX)
    check("sh payload: plain text " + SUFFIX in out, "sh worker printed %r" % (out,))


@step("code_delete")
def _():
    sh_code_id = need("sh_code_id")
    check(worker.deleteCode(sh_code_id) is True, "deleteCode did not return True")
    try:
        c = worker.code(sh_code_id)
    except HTTPError as e:
        check(e.response.status_code == 404, "code info after delete: %s" % describe(e))
    else:
        raise CheckFailed("the deleted code is still served: %r" % (vars(c),))
    check(NAME + "-sh" not in [c.name for c in worker.codes()], "the deleted code is still listed")


@step("cleanup")
def _():
    code_id = need("code_id")
    worker.deleteCode(code_id)


finish()
