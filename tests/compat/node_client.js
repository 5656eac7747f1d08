#!/usr/bin/env node
// Drives IronWorker's official Node client, npm iron_worker 0.1.8 (over iron_core 0.2.7), against a
// live workhook. Run it with the npm prefix that tests/compat/setup installs on NODE_PATH:
//
//   NODE_PATH=~/.cache/workhook-compat/npm/node_modules WORKHOOK_COMPAT_PORT=8080 \
//     WORKHOOK_COMPAT_PROJECT_ID=... WORKHOOK_COMPAT_TOKEN=... node tests/compat/node_client.js
//
// Env: WORKHOOK_COMPAT_HOST (127.0.0.1), WORKHOOK_COMPAT_PORT (8080), WORKHOOK_COMPAT_PROJECT_ID,
// WORKHOOK_COMPAT_TOKEN (required), WORKHOOK_COMPAT_TIMEOUT (whole run, seconds, 180),
// WORKHOOK_COMPAT_KEEP_GOING=1 (run every step and report all failures instead of stopping at the
// first one; the exit status is non-zero either way), WORKHOOK_COMPAT_NODE_MODULES (where
// iron_worker is installed, if not on NODE_PATH).
//
// Each step prints `ok <step>`. A failure prints `FAIL <step>: <call> failed: <error> [<method> <path>
// -> HTTP <status> (<content type>) <body>]` and the run exits non-zero. Names carry a random
// suffix, so runs do not collide.
//
// What the client offers (class Client in lib/client.js over lib/api_client.js) and where it is
// covered:
//   codesUpload(name, dir, file)       POST codes (multipart, needle)         upload, upload_revision
//   codesList(options)                 GET codes?options                      codes_list
//   codesGet(id)                       GET codes/{id}                         code_info, code_delete
//   codesRevisions(id, options)        GET codes/{id}/revisions?options       code_revisions
//   codesDownload(id, options)         GET codes/{id}/download?revision=N     code_download
//   codesDelete(id)                    DELETE codes/{id}                      code_delete, cleanup
//   tasksCreate(code, payload, opts)   POST tasks                             queue, queue_error, ...
//   tasksCreateBulk([{codeName, payload, options}])  POST tasks (answers only tasks[0])  queue_bulk
//   tasksGet(id)                       GET tasks/{id}                         task_info and most steps
//   tasksList(options)                 GET tasks?options                      list_tasks
//   tasksSetProgress(id, options)      POST tasks/{id}/progress               set_progress
//   tasksRetry(id, delay)              POST tasks/{id}/retry                  retry
//   tasksCancel(id)                    POST tasks/{id}/cancel                 cancel
//   tasksCancelAll(codeId)             POST codes/{id}/cancel_all             cancel_all
//   tasksLog(id), tasksWaitForLog      GET tasks/{id}/log                     log
//   tasksStdout(id), tasksWaitForSyncTaskStdout  GET tasks/{id}/outlog        stdout, run
//   tasksWaitFor(id, options)          GET tasks/{id} until done              wait_for
//   tasksRun(code, payload, options)   POST tasks (sync), wait, outlog        run
//   schedulesCreate(code, payload, opts)  POST schedules                      schedule_create, schedule_runs
//   schedulesGet(id)                   GET schedules/{id}                     schedule_info
//   schedulesList(options)             GET schedules?options                  schedule_list
//   schedulesCancel(id)                POST schedules/{id}/cancel             schedule_cancel
//   worker side: params(), config(), taskId(), taskDir() (env PAYLOAD_FILE, CONFIG_FILE, TASK_ID,
//     TASK_DIR; argv -payload/-config/-id/-d, which its __runner__.sh does not pass on)  worker_helpers
// Not covered: clustersList/Get/Stats/Create/Update/Delete and instanceTerminate (GET/POST/PUT/DELETE
// /2/clusters...: dedicated clusters, outside this API). The client lacks code stats,
// pause/resume_task_queue, schedule update (PUT) and the webhook.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const crypto = require('crypto');

const HOST = process.env.WORKHOOK_COMPAT_HOST || '127.0.0.1';
const PORT = Number(process.env.WORKHOOK_COMPAT_PORT || 8080);
const PROJECT_ID = process.env.WORKHOOK_COMPAT_PROJECT_ID || '';
const TOKEN = process.env.WORKHOOK_COMPAT_TOKEN || '';
const RUN_TIMEOUT = Number(process.env.WORKHOOK_COMPAT_TIMEOUT || 180);
const KEEP_GOING = !['', '0', undefined].includes(process.env.WORKHOOK_COMPAT_KEEP_GOING);

const SUFFIX = crypto.randomBytes(4).toString('hex');
const NAME = 'compat-node-' + SUFFIX;
const HEX24 = /^[0-9a-f]{24}$/;
const IN_PROGRESS = ['queued', 'preparing', 'running'];
const STATUSES = ['queued', 'preparing', 'running', 'complete', 'error', 'cancelled', 'killed', 'timeout'];

// --------------------------------------------------------------- failing loudly

let current = 'setup';
let last = null; // the last HTTP exchange, for the failure message
const failures = [];
const passed = [];

let workdir = null;

function finish() {
  process.chdir('/');
  if (workdir) fs.rmSync(workdir, { recursive: true, force: true });
  if (failures.length) console.log(`${failures.length} step(s) failed: ${failures.join(' ')}`);
  console.log(`node_client: ${passed.length} passed, ${failures.length} failed`);
  process.exit(failures.length ? 1 : 0);
}

function lastExchange() {
  if (!last) return '';
  const u = String(last.uri).replace(/^\w+:\/\/[^/]+/, '');
  const q = last.qs && Object.keys(last.qs).length ? '?' + new URLSearchParams(last.qs).toString() : '';
  let body = last.body;
  if (typeof body !== 'string') body = JSON.stringify(body);
  return ` [${last.method} ${u}${q} -> ${last.error ? 'error ' + last.error : 'HTTP ' + last.status} (${last.type}) ${String(body).slice(0, 600)}]`;
}

function die(what) {
  console.log(`FAIL ${current}: ${what}${lastExchange()}`);
  console.log(`node_client: ${passed.length} passed, ${failures.length + 1} failed`);
  process.exit(1);
}
process.on('uncaughtException', (e) => die(`uncaught exception: ${e && e.stack || e}`));
process.on('unhandledRejection', (e) => die(`unhandled rejection: ${e && e.stack || e}`));
setTimeout(() => die(`timeout: the run took longer than ${RUN_TIMEOUT}s (a call hung?)`), RUN_TIMEOUT * 1000);

class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
}
function checkId(v, what) {
  check(typeof v === 'string' && HEX24.test(v), `${what} is not 24 hex characters: ${JSON.stringify(v)}`);
}
function checkTime(v, what) {
  check(typeof v === 'string' && !Number.isNaN(Date.parse(v)), `${what} is not an RFC 3339 time: ${JSON.stringify(v)}`);
}

const state = {};
function need(...keys) {
  for (const k of keys) {
    if (!(k in state)) throw new CheckFailed(`needs ${k} from an earlier step that failed`);
  }
  return keys.length === 1 ? state[keys[0]] : keys.map((k) => state[k]);
}

async function step(name, fn) {
  current = name;
  last = null;
  try {
    await fn();
  } catch (e) {
    const what = e instanceof CheckFailed ? e.message : (e.callFailed ? e.message : (e && e.stack) || String(e));
    console.log(`FAIL ${name}: ${what}`);
    failures.push(name);
    if (!KEEP_GOING) finish();
    return;
  }
  passed.push(name);
  console.log(`ok ${name}`);
}

// --------------------------------------------------------------- the client

if (!PROJECT_ID || !TOKEN) {
  console.error('set WORKHOOK_COMPAT_PROJECT_ID and WORKHOOK_COMPAT_TOKEN (and WORKHOOK_COMPAT_PORT)');
  process.exit(2);
}
const searchPaths = [process.env.WORKHOOK_COMPAT_NODE_MODULES, ...(process.env.NODE_PATH || '').split(path.delimiter)]
  .filter(Boolean);
const iwDir = path.dirname(require.resolve('iron_worker/package.json', { paths: searchPaths }));
const ironWorker = require(iwDir);
check(require(path.join(iwDir, 'package.json')).version === '0.1.8', 'iron_worker is not 0.1.8');

const client = new ironWorker.Client({ project_id: PROJECT_ID, token: TOKEN, host: HOST, port: PORT, scheme: 'http' });
check(client.api.url() === `http://${HOST}:${PORT}/2/`, `client url ${client.api.url()}`);

// Record every exchange: iron_core's request() for most calls, needle.post for the upload.
const coreRequest = client.api.request;
client.api.request = function (info, cb, retry) {
  return coreRequest.call(this, info, (error, response, body) => {
    last = {
      method: info.method, uri: info.uri, qs: info.qs, error: error && !response ? String(error) : null,
      status: response && response.statusCode, type: response && response.headers['content-type'], body,
    };
    cb(error, response, body);
  }, retry);
};
const needle = require(require.resolve('needle', { paths: [iwDir] }));
const needlePost = needle.post;
needle.post = function (uri, data, options, cb) {
  return needlePost.call(this, uri, data, options, (error, response, body) => {
    last = {
      method: 'POST', uri, error: error ? String(error) : null,
      status: response && response.statusCode, type: response && response.headers['content-type'], body,
    };
    cb(error, response, body);
  });
};

// Calls a client method as a promise; a failure names the call and the server's answer.
function call(method, ...args) {
  return new Promise((resolve, reject) => {
    last = null;
    client[method](...args, (err, body) => {
      if (err) {
        const shown = args.map((a) => JSON.stringify(a)).join(', ');
        const e = new Error(`${method}(${shown}) failed: ${err.message}${lastExchange()}`);
        e.callFailed = true;
        reject(e);
      } else {
        resolve(body);
      }
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function poll(fetch, done, what, timeoutS = 60) {
  const deadline = Date.now() + timeoutS * 1000;
  let delay = 200;
  for (;;) {
    const v = await fetch();
    if (done(v)) return v;
    if (Date.now() > deadline) throw new CheckFailed(`timed out after ${timeoutS}s waiting for ${what}; last: ${JSON.stringify(v)}`);
    await sleep(delay);
    delay = Math.min(delay * 1.5, 2000);
  }
}

const waitDone = (id, timeoutS = 60) =>
  poll(() => call('tasksGet', id), (t) => !IN_PROGRESS.includes(t.status), `task ${id} to finish`, timeoutS);

function checkTask(t, id, codeName) {
  check(t && t.id === id, `task id ${JSON.stringify(t && t.id)}, wanted ${id}`);
  checkId(t.id, 'task id');
  check(t.code_name === codeName, `code_name ${JSON.stringify(t.code_name)}, wanted ${codeName}`);
  check(t.project_id === PROJECT_ID, `project_id ${JSON.stringify(t.project_id)}`);
  checkId(t.code_id, 'code_id');
  checkId(t.code_history_id, 'code_history_id');
  check(typeof t.code_rev === 'string' && /^\d+$/.test(t.code_rev), `code_rev is not a numeric string: ${JSON.stringify(t.code_rev)}`);
  check(STATUSES.includes(t.status), `unknown status ${JSON.stringify(t.status)}`);
  checkTime(t.created_at, 'created_at');
  checkTime(t.updated_at, 'updated_at');
}

const ids = (list) => list.map((t) => t.id);

// The package: the client copies ./upload_files/__runner__.sh (a path relative to the working
// directory!) into the worker's directory, appends `node <file>` and zips the directory, sending
// runtime "sh", file_name "__runner__.sh". So work in a directory that holds upload_files/.
workdir = fs.mkdtempSync(path.join(os.tmpdir(), 'workhook-compat-node-'));
process.chdir(workdir);
fs.mkdirSync('upload_files');
fs.copyFileSync(path.join(iwDir, 'upload_files', '__runner__.sh'), path.join('upload_files', '__runner__.sh'));
fs.mkdirSync('src');
// adm-zip 0.4.4, which the client zips with, writes each file's CRC-32 with
// Buffer.writeInt32LE(crc, offset, noAssert=true); Node >= 10 ignores noAssert and throws
// ERR_OUT_OF_RANGE for a CRC >= 2^31, so on today's Node the client fails to upload about half of
// all files. Keep our two files' CRCs below 2^31: pad hello.js, pick the name that __runner__.sh runs.
function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}
const runnerBase = fs.readFileSync(path.join('upload_files', '__runner__.sh'));
const WORKER_FILE = ['hello.js', './hello.js', 'hello.js ', './hello.js ', 'hello.js  ']
  .find((f) => crc32(Buffer.concat([runnerBase, Buffer.from('\nnode ' + f)])) < 0x80000000);
check(WORKER_FILE, 'no worker file name gives __runner__.sh a CRC-32 below 2^31');
const helloJs = `const fs = require('fs');
const payload = fs.readFileSync(process.env.PAYLOAD_FILE, 'utf8');
console.log('payload: ' + payload);
console.error('stderr-marker');
let p = {};
try { p = JSON.parse(payload) || {}; } catch (e) {}
try {
  const iw = require(${JSON.stringify(iwDir)});
  console.log('helper: ' + JSON.stringify({ payload: iw.params(), task_id: iw.taskId(), dir: iw.taskDir() }));
} catch (e) {
  console.log('helper-unavailable: ' + e);
}
setTimeout(() => process.exit(p.exit || 0), (p.sleep || 0) * 1000);
`;
let pad = '//';
while (crc32(Buffer.from(helloJs + pad)) >= 0x80000000) pad += 'x';
fs.writeFileSync('src/hello.js', helloJs + pad);
const started = Math.floor(Date.now() / 1000);

function uploadBody(body) {
  // The client hands back needle's body: parsed JSON, or a string.
  return typeof body === 'string' ? JSON.parse(body) : body;
}

async function main() {
  // ------------------------------------------------------------- code packages
  await step('upload', async () => {
    const body = uploadBody(await call('codesUpload', NAME, 'src', WORKER_FILE));
    checkId(body && body.id, 'uploaded code id');
    state.code_id = body.id;
  });

  await step('codes_list', async () => {
    const codeId = need('code_id');
    let mine = [];
    for (let page = 0; page < 20 && !mine.length; page++) {
      const codes = await call('codesList', { page, per_page: 100 });
      check(Array.isArray(codes), `codesList gave ${JSON.stringify(codes)}`);
      mine = codes.filter((c) => c.name === NAME);
      if (codes.length < 100) break;
    }
    check(mine.length === 1, `code ${NAME} listed ${mine.length} times`);
    const c = mine[0];
    check(c.id === codeId && c.project_id === PROJECT_ID && c.rev === 1, `listed ${JSON.stringify(c)}`);
    checkTime(c.latest_change, 'latest_change');
  });

  await step('code_info', async () => {
    const codeId = need('code_id');
    const c = await call('codesGet', codeId);
    check(c.id === codeId && c.name === NAME && c.rev === 1 && c.project_id === PROJECT_ID, `code info ${JSON.stringify(c)}`);
    checkId(c.latest_history_id, 'latest_history_id');
  });

  await step('upload_revision', async () => {
    const codeId = need('code_id');
    const body = uploadBody(await call('codesUpload', NAME, 'src', WORKER_FILE));
    check(body && body.id === codeId, `re-upload answered ${JSON.stringify(body)}, the code's id is ${codeId}`);
    state.rev2 = true;
  });

  await step('code_revisions', async () => {
    const [codeId] = need('code_id', 'rev2');
    const revs = await call('codesRevisions', codeId, {});
    check(Array.isArray(revs) && revs.length === 2, `revisions ${JSON.stringify(revs)}`);
    check(JSON.stringify(revs.map((r) => r.rev).sort()) === '[1,2]', `revisions ${JSON.stringify(revs)}`);
  });

  await step('code_download', async () => {
    const codeId = need('code_id');
    const body = await call('codesDownload', codeId, { revision: 1 });
    // request decodes the zip as UTF-8 text; its first bytes survive.
    check(typeof body === 'string' && body.startsWith('PK'), `download gave ${JSON.stringify(String(body).slice(0, 40))}`);
    check(/__runner__\.sh/.test(body) && /hello\.js/.test(body), 'the downloaded zip lacks __runner__.sh or hello.js');
  });

  // ------------------------------------------------------------- tasks
  await step('queue', async () => {
    need('code_id');
    const mark = 'node-' + crypto.randomBytes(8).toString('hex');
    const t = await call('tasksCreate', NAME, { hello: mark, sleep: 3 },
      { priority: 1, timeout: 120, delay: 0, label: 'compat-' + SUFFIX });
    checkId(t && t.id, 'queued task id');
    Object.assign(state, { task_id: t.id, mark });
  });

  await step('task_info', async () => {
    const [taskId, codeId, mark] = need('task_id', 'code_id', 'mark');
    const t = await call('tasksGet', taskId);
    checkTask(t, taskId, NAME);
    check(t.code_id === codeId, `code_id ${t.code_id}, the code is ${codeId}`);
    check(t.code_rev === '2', `code_rev ${JSON.stringify(t.code_rev)}, wanted "2"`);
    check(t.priority === 1 && t.timeout === 120 && t.label === 'compat-' + SUFFIX,
      `priority/timeout/label ${t.priority}/${t.timeout}/${t.label}`);
    check(typeof t.payload === 'string' && JSON.parse(t.payload).hello === mark, `payload ${JSON.stringify(t.payload)}`);
  });

  await step('set_progress', async () => {
    const taskId = need('task_id');
    await poll(() => call('tasksGet', taskId), (t) => !['queued', 'preparing'].includes(t.status), `task ${taskId} to start`, 30);
    const body = await call('tasksSetProgress', taskId, { percent: 50, msg: 'halfway' });
    check(body && typeof body === 'object' && body.msg, `progress answered ${JSON.stringify(body)}`);
    const t = await call('tasksGet', taskId);
    check(t.percent === 50, `percent ${JSON.stringify(t.percent)} after setting 50`);
  });

  await step('wait_for', async () => {
    const taskId = need('task_id');
    const t = await call('tasksWaitFor', taskId, {});
    check(t.status === 'complete', `status ${t.status}, msg ${JSON.stringify(t.msg)}`);
    checkTime(t.start_time, 'start_time');
    checkTime(t.end_time, 'end_time');
    check(!t.end_time.startsWith('0001-'), `end_time ${t.end_time} on a complete task`);
    state.complete_id = taskId;
  });

  await step('log', async () => {
    const [taskId, mark] = need('complete_id', 'mark');
    const viaWait = await call('tasksWaitForLog', taskId, {});
    check(typeof viaWait === 'string' && viaWait.includes(mark), `tasksWaitForLog gave ${JSON.stringify(viaWait)}`);
    const log = await call('tasksLog', taskId);
    check(typeof log === 'string' && log.includes(mark), `payload mark not in the log: ${JSON.stringify(log)}`);
    check(log.includes('stderr-marker'), `stderr not in the log: ${JSON.stringify(log)}`);
    state.log = log;
  });

  await step('stdout', async () => {
    const [taskId, mark] = need('complete_id', 'mark');
    const out = await call('tasksStdout', taskId);
    check(typeof out === 'string' && out.includes(mark), `payload mark not in outlog: ${JSON.stringify(out)}`);
    check(!out.includes('stderr-marker'), `outlog holds stderr: ${JSON.stringify(out)}`);
  });

  await step('worker_helpers', async () => {
    const [log, taskId, mark] = need('log', 'complete_id', 'mark');
    const line = log.split('\n').find((l) => l.startsWith('helper: '));
    check(line, `no helper line in the log: ${JSON.stringify(log)}`);
    const got = JSON.parse(line.slice('helper: '.length));
    check(got.payload && got.payload.hello === mark, `params() ${JSON.stringify(got.payload)}`);
    check(got.task_id === taskId, `taskId() ${JSON.stringify(got.task_id)}`);
    check(got.dir, `taskDir() ${JSON.stringify(got.dir)}`);
  });

  await step('run', async () => {
    need('code_id');
    const mark = 'node-run-' + crypto.randomBytes(8).toString('hex');
    const out = await call('tasksRun', NAME, { hello: mark }, {});
    check(typeof out === 'string' && out.includes(mark), `tasksRun gave ${JSON.stringify(out)}`);
  });

  await step('queue_error', async () => {
    need('code_id');
    const q = await call('tasksCreate', NAME, { exit: 3 }, {});
    const t = await waitDone(q.id);
    check(t.status === 'error', `status ${t.status} for a worker that exits 3`);
    state.error_id = q.id;
  });

  await step('retry', async () => {
    const errorId = need('error_id');
    const body = await call('tasksRetry', errorId, 0);
    check(body && Array.isArray(body.tasks) && body.tasks.length, `retry answered ${JSON.stringify(body)}`);
    const newId = body.tasks[0].id;
    checkId(newId, 'retried task id');
    check(newId !== errorId, `retry kept the id ${newId}`);
    checkTask(await call('tasksGet', newId), newId, NAME);
    const t = await waitDone(newId);
    check(t.status === 'error', `the retried task ended ${t.status}`);
  });

  await step('queue_bulk', async () => {
    need('code_id');
    const first = await call('tasksCreateBulk', [
      { codeName: NAME, payload: { n: 1 }, options: {} },
      { codeName: NAME, payload: 'two', options: { priority: 2 } },
    ]);
    checkId(first && first.id, 'first bulk task id'); // the client hands back tasks[0] only
    const listed = await call('tasksList', { code_name: NAME, per_page: 100 });
    check(Array.isArray(listed) && listed.filter((t) => t.payload === 'two').length === 1, 'the second bulk task is not listed');
  });

  await step('queue_delayed', async () => {
    need('code_id');
    const q = await call('tasksCreate', NAME, { later: true }, { delay: 60 });
    const t = await call('tasksGet', q.id);
    check(t.status === 'queued' && t.delay === 60, `a task delayed 60 s: status ${t.status}, delay ${t.delay}`);
    state.delayed_id = q.id;
  });

  await step('list_tasks', async () => {
    const [completeId, errorId, delayedId] = need('complete_id', 'error_id', 'delayed_id');
    const all = await call('tasksList', { code_name: NAME, per_page: 100 });
    check(Array.isArray(all), `tasksList gave ${JSON.stringify(all)}`);
    for (const id of [completeId, errorId, delayedId]) check(ids(all).includes(id), `task ${id} missing from tasksList({code_name})`);
    for (const t of all) check(t.code_name === NAME, `tasksList({code_name: ${NAME}}) listed ${t.code_name}`);
    checkTask(all.find((t) => t.id === completeId), completeId, NAME);
    const complete = await call('tasksList', { code_name: NAME, complete: 1 });
    check(ids(complete).includes(completeId) && complete.every((t) => t.status === 'complete'),
      `complete=1 listed ${JSON.stringify(complete.map((t) => [t.id, t.status]))}`);
    const errors = ids(await call('tasksList', { code_name: NAME, error: 1 }));
    check(errors.includes(errorId) && !errors.includes(completeId), `error=1 listed ${errors}`);
    const either = ids(await call('tasksList', { code_name: NAME, queued: 1, error: 1 }));
    check(either.includes(delayedId) && either.includes(errorId) && !either.includes(completeId), `queued=1&error=1 listed ${either}`);
    const recent = ids(await call('tasksList', { code_name: NAME, from_time: started - 5 }));
    check(recent.includes(completeId), `from_time lacks ${completeId}`);
    const old = await call('tasksList', { code_name: NAME, to_time: started - 3600 });
    check(old.length === 0, `to_time an hour back listed ${ids(old)}`);
    const p0 = await call('tasksList', { code_name: NAME, page: 0, per_page: 1 });
    const p1 = await call('tasksList', { code_name: NAME, page: 1, per_page: 1 });
    check(p0.length === 1 && p1.length === 1 && p0[0].id !== p1[0].id, `paging: ${ids(p0)} / ${ids(p1)}`);
  });

  await step('cancel', async () => {
    const delayedId = need('delayed_id');
    const body = await call('tasksCancel', delayedId);
    check(body && body.msg, `cancel answered ${JSON.stringify(body)}`);
    const t = await call('tasksGet', delayedId);
    check(t.status === 'cancelled', `status ${t.status} after cancel`);
    check(ids(await call('tasksList', { code_name: NAME, cancelled: 1 })).includes(delayedId), 'cancelled=1 lacks the task');
  });

  await step('cancel_all', async () => {
    const codeId = need('code_id');
    const a = await call('tasksCreate', NAME, { later: 1 }, { delay: 60 });
    const b = await call('tasksCreate', NAME, { later: 2 }, { delay: 60 });
    const body = await call('tasksCancelAll', codeId);
    check(body && typeof body === 'object', `cancel_all answered ${JSON.stringify(body)}`);
    for (const id of [a.id, b.id]) {
      const t = await call('tasksGet', id);
      check(t.status === 'cancelled', `task ${id} is ${t.status} after cancel_all`);
    }
  });

  // ------------------------------------------------------------- schedules
  await step('schedule_create', async () => {
    need('code_id');
    const startAt = new Date(Date.now() + 3600 * 1000).toISOString();
    const s = await call('schedulesCreate', NAME, { scheduled: SUFFIX },
      { start_at: startAt, run_every: 3600, run_times: 5, priority: 2, timeout: 60, label: 'compat-sched-' + SUFFIX });
    checkId(s && s.id, 'schedule id');
    Object.assign(state, { schedule_id: s.id, start_at: startAt });
  });

  await step('schedule_info', async () => {
    const [sid, startAt] = need('schedule_id', 'start_at');
    const s = await call('schedulesGet', sid);
    check(s.id === sid && s.code_name === NAME && s.project_id === PROJECT_ID, `schedule ${JSON.stringify(s)}`);
    check(s.status === 'scheduled', `status ${s.status}`);
    check(s.run_every === 3600 && s.run_times === 5 && s.priority === 2, `run_every/run_times/priority ${s.run_every}/${s.run_times}/${s.priority}`);
    check(s.payload === JSON.stringify({ scheduled: SUFFIX }), `payload ${JSON.stringify(s.payload)}`);
    checkTime(s.start_at, 'start_at');
    check(Math.abs(Date.parse(s.start_at) - Date.parse(startAt)) < 2000, `start_at ${s.start_at}, sent ${startAt}`);
    checkTime(s.created_at, 'created_at');
  });

  await step('schedule_list', async () => {
    const sid = need('schedule_id');
    let found;
    for (let page = 0; page < 20 && !found; page++) {
      const batch = await call('schedulesList', { page, per_page: 100 });
      check(Array.isArray(batch), `schedulesList gave ${JSON.stringify(batch)}`);
      found = batch.find((s) => s.id === sid);
      if (batch.length < 100) break;
    }
    check(found && found.code_name === NAME, `schedule ${sid} not listed`);
  });

  await step('schedule_cancel', async () => {
    const sid = need('schedule_id');
    const body = await call('schedulesCancel', sid);
    check(body && body.msg, `cancel answered ${JSON.stringify(body)}`);
    const s = await call('schedulesGet', sid);
    check(s.status === 'cancelled', `schedule status ${s.status} after cancel`);
  });

  await step('schedule_runs', async () => {
    need('code_id');
    const s = await call('schedulesCreate', NAME, { from: 'schedule' },
      { start_at: new Date(Date.now() + 2000).toISOString(), run_times: 1 });
    checkId(s && s.id, 'schedule id');
    const spawned = await poll(
      async () => (await call('tasksList', { code_name: NAME, per_page: 100 })).filter((t) => t.schedule_id === s.id),
      (ts) => ts.length > 0, `schedule ${s.id} to queue a task`, 90);
    check(spawned.length === 1, `a run_times=1 schedule queued ${spawned.length} tasks`);
    const t = await waitDone(spawned[0].id);
    checkTask(t, spawned[0].id, NAME);
    check(t.schedule_id === s.id, `schedule_id ${JSON.stringify(t.schedule_id)} in the task's info`);
    check(t.status === 'complete', `the scheduled task ended ${t.status}`);
    const info = await poll(() => call('schedulesGet', s.id), (x) => x.status !== 'scheduled', `schedule ${s.id} to complete`, 30);
    check(info.status === 'complete' && info.run_count === 1, `schedule status ${info.status}, run_count ${info.run_count}`);
  });

  // ------------------------------------------------------------- deleting codes
  await step('code_delete', async () => {
    const body = uploadBody(await call('codesUpload', NAME + '-del', 'src', WORKER_FILE));
    checkId(body && body.id, 'throwaway code id');
    await call('codesDelete', body.id);
    let gone = false;
    try {
      await call('codesGet', body.id);
    } catch (e) {
      gone = last && last.status === 404;
      if (!gone) throw e;
    }
    check(gone, 'the deleted code is still served');
    const codes = await call('codesList', { per_page: 100 });
    check(!codes.some((c) => c.name === NAME + '-del'), 'the deleted code is still listed');
  });

  await step('cleanup', async () => {
    const codeId = need('code_id');
    await call('codesDelete', codeId);
  });

  finish();
}

main().catch((e) => die(e && e.stack || String(e)));
