#!/usr/bin/env node
// Runs the unit and React tests, then the integration tests (one file at a time: each starts
// real servers, and the machine may have two cores). Prints one closing line
// `js: N passed, N failed` and exits non-zero when anything failed.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, '.tmp', 'results');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');

const runs = [
  ['unit', ['--project', 'unit', '--project', 'react']],
  ['integration', ['--project', 'integration', '--no-file-parallelism']],
];
let passed = 0;
let failed = 0;
let ok = true;
for (const [name, args] of runs) {
  const file = join(out, `${name}.json`);
  const r = spawnSync(process.execPath, [vitest, 'run', ...args, '--reporter=default', '--reporter=json', `--outputFile.json=${file}`], {
    cwd: root,
    stdio: 'inherit',
  });
  if (r.status !== 0) ok = false;
  try {
    const j = JSON.parse(readFileSync(file, 'utf8'));
    passed += j.numPassedTests ?? 0;
    failed += j.numFailedTests ?? 0;
    // A file that fails to load counts as a failure even though none of its tests ran.
    if (!j.success && !j.numFailedTests) failed += 1;
    if (!j.success) ok = false;
  } catch {
    ok = false;
    failed += 1; // the run itself broke
  }
}
console.log(`js: ${passed} passed, ${failed} failed`);
process.exit(ok && failed === 0 ? 0 : 1);
