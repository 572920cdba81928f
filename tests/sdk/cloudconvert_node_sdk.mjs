// CloudConvert's official Node.js SDK (npm cloudconvert 3.x), unchanged, against the sandbox.
// The SDK has no base-URL option: its hosts (api.cloudconvert.com, sync.api.cloudconvert.com)
// are mapped onto the sandbox at the fetch layer, as a DNS entry would, and nothing else is
// touched. Driven by test_cloudconvert_node_sdk.py; prints one JSON line per check
// {"check", "ok", "detail"}. Environment: SANDBOX_URL, SANDBOX_SYNC_URL, API_KEY,
// WRITE_ONLY_KEY, SIGNING_SECRET, INPUT_URL, INPUT_FILE.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const CloudConvert = require('cloudconvert');
const env = process.env;

const HOSTS = {
  'https://api.cloudconvert.com/': `${env.SANDBOX_URL}/`,
  'https://sync.api.cloudconvert.com/': `${env.SANDBOX_SYNC_URL}/`,
};
const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  let url = String(input instanceof Request ? input.url : input);
  for (const [from, to] of Object.entries(HOSTS)) {
    if (url.startsWith(from)) url = to + url.slice(from.length);
  }
  return realFetch(url, init);
};

const cc = new CloudConvert(env.API_KEY);
const results = [];
async function check(name, body) {
  try {
    const detail = await body();
    results.push({ check: name, ok: true, detail: detail ?? null });
  } catch (error) {
    results.push({ check: name, ok: false, detail: String(error?.stack ?? error) });
  }
}
function assert(condition, message) {
  if (!condition) throw new Error(message);
}
function urlJob(extra = {}) {
  return {
    tasks: {
      import: { operation: 'import/url', url: env.INPUT_URL },
      convert: { operation: 'convert', input: 'import', output_format: 'jpg' },
      export: { operation: 'export/url', input: 'convert' },
    },
    ...extra,
  };
}

let job;
await check('create and wait', async () => {
  const created = await cc.jobs.create(urlJob());
  job = await cc.jobs.wait(created.id);
  assert(job.status === 'finished', `job ended ${job.status}`);
});

await check('get job and task', async () => {
  const found = await cc.jobs.get(job.id);
  assert(found.id === job.id && found.tasks.length === 3, 'job not found with its tasks');
  const exportTask = job.tasks.find((t) => t.name === 'export');
  const task = await cc.tasks.get(exportTask.id);
  assert(task.result.files[0].filename === 'in.jpg', 'export task lacks its file');
  const waited = await cc.tasks.wait(exportTask.id);
  assert(waited.status === 'finished', 'task wait did not end finished');
  const listed = await cc.tasks.all({ 'filter[job_id]': job.id });
  assert(listed.length === 3, `the job lists ${listed.length} tasks`);
});

await check('list jobs by tag', async () => {
  const tag = `node-${Date.now()}-${Math.random()}`;
  const ids = [];
  for (let i = 0; i < 2; i += 1) ids.push((await cc.jobs.create(urlJob({ tag }))).id);
  await cc.jobs.create(urlJob({ tag: 'someone-else' }));
  const listed = await cc.jobs.all({ 'filter[tag]': tag });
  assert(JSON.stringify(listed.map((j) => j.id).sort()) === JSON.stringify(ids.sort()),
    'the tag filter did not find exactly the tagged jobs');
});

await check('upload an input', async () => {
  const created = await cc.jobs.create({
    tasks: {
      upload: { operation: 'import/upload' },
      convert: { operation: 'convert', input: 'upload', output_format: 'jpg' },
      export: { operation: 'export/url', input: 'convert' },
    },
  });
  const uploadTask = created.tasks.find((t) => t.name === 'upload');
  await cc.tasks.upload(uploadTask, readFileSync(env.INPUT_FILE), 'upload.png');
  const done = await cc.jobs.wait(created.id);
  assert(done.status === 'finished', `uploaded job ended ${done.status}`);
  const [file] = cc.jobs.getExportUrls(done);
  assert(file.filename === 'upload.jpg', `exported ${file.filename}`);
});

await check('download an export/url result', async () => {
  const [file] = cc.jobs.getExportUrls(job);
  const answer = await realFetch(file.url); // follows the 302 to the storage host
  assert(answer.ok, `download answered ${answer.status}`);
  const bytes = new Uint8Array(await answer.arrayBuffer());
  assert(bytes[0] === 0xff && bytes[1] === 0xd8, 'the download is not a JPEG');
  assert(answer.redirected, 'the download was not redirected');
});

await check('verify a delivered webhook', async () => {
  const delivered = new Promise((resolve) => {
    const server = createServer((request, response) => {
      const chunks = [];
      request.on('data', (chunk) => chunks.push(chunk));
      request.on('end', () => {
        response.end();
        server.close();
        resolve({ body: Buffer.concat(chunks).toString('utf-8'),
          signature: request.headers['cloudconvert-signature'] });
      });
    }).listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      cc.jobs.create(urlJob({ webhook_url: `http://127.0.0.1:${port}/hook` }));
    });
  });
  const { body, signature } = await delivered;
  assert(cc.webhooks.verify(body, signature, env.SIGNING_SECRET), 'signature did not verify');
  assert(!cc.webhooks.verify(`${body} `, signature, env.SIGNING_SECRET), 'tampered body verified');
  assert(JSON.parse(body).event === 'job.finished', 'not a job.finished event');
});

await check('a key without task.read is refused', async () => {
  const writeOnly = new CloudConvert(env.WRITE_ONLY_KEY);
  const created = await writeOnly.jobs.create(urlJob());
  let status = null;
  try {
    await writeOnly.jobs.get(created.id);
  } catch (error) {
    status = error.cause?.status;
  }
  assert(status === 403, `reading with a task.write key answered ${status}`);
});

for (const result of results) console.log(JSON.stringify(result));
