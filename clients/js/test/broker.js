// Starts the real broker as a child process for the tests: its own data directory and working
// directory, ports chosen by the OS (port 0), learned from its log lines ("Native protocol listening
// on ...", "Ready"), and tokens minted with the secret it generated (docs/operations.md, "Tokens").
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/**
 * The broker command as argv, before `serve ...`. The one place to change when the executable moves:
 * CHATBROKER_CMD (split on spaces), else the build that clients/js/test.sh makes.
 */
export function brokerCommand() {
  const fromEnv = process.env.CHATBROKER_CMD?.trim();
  if (fromEnv) return fromEnv.split(/\s+/);
  return ['dotnet', join(repo, 'Host', 'bin', 'Release', 'net10.0', 'chatbroker.dll')];
}

/** Starts `serve` and resolves once it is Ready: { host, port, dataDir, token(user, device), stop() }. */
export async function startBroker(extraSettings = []) {
  const dataDir = mkdtempSync(join(tmpdir(), 'chatbroker-js-data-'));
  const cwd = mkdtempSync(join(tmpdir(), 'chatbroker-js-cwd-'));
  const [command, ...prefix] = brokerCommand();
  const args = [...prefix, 'serve',
    '--set', `node.data_dir=${dataDir}`,
    '--set', 'tcp.listen=127.0.0.1:0',
    '--set', 'admin.listen=127.0.0.1:0',
    ...extraSettings.flatMap((s) => ['--set', s])];
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toUpperCase().startsWith('CHATBROKER__')));
  const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = [];
  let endpoint = null;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`broker not ready within 60 s:\n${output.join('\n')}`)), 60_000);
    exited.then((code) => { clearTimeout(timer); reject(new Error(`broker exited (${code}) before Ready:\n${output.join('\n')}`)); });
    let partial = '';
    const onChunk = (chunk) => {
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop();
      for (const line of lines) {
        output.push(line);
        const m = /Native protocol listening on (\S+):(\d+)/.exec(line);
        if (m) endpoint = { host: m[1], port: Number(m[2]) };
        if (/\bReady\b/.test(line)) {
          clearTimeout(timer);
          resolve();
        }
      }
    };
    child.stdout.on('data', onChunk);
    child.stderr.on('data', onChunk);
  });
  try {
    await ready;
  } catch (error) {
    child.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(cwd, { recursive: true, force: true });
    throw error;
  }
  if (endpoint === null) throw new Error(`no listening line in the broker output:\n${output.join('\n')}`);
  const secret = Buffer.from(readFileSync(join(dataDir, 'token.secret'), 'utf8').trim(), 'base64');
  return {
    ...endpoint,
    dataDir,
    output,
    token: (user, device, secretKey = secret) => mintToken(secretKey, user, device),
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(cwd, { recursive: true, force: true });
    },
  };
}

/** An HS256 JWT {"sub": user, "dev": device, "iat", "exp"} signed with `secret`, as an app backend makes one. */
export function mintToken(secret, user, device, ttlSeconds = 3600) {
  const b64 = (value) => Buffer.from(value).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64(JSON.stringify({ sub: user, dev: device, iat: now, exp: now + ttlSeconds }))}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}
