// The web chat (clients/web) serves protobufjs and long from clients/web/vendor, so that the broker's build needs
// no npm. These copies must be the files of the versions package-lock.json pins: update them with
//   cp node_modules/protobufjs/dist/light/protobuf.min.js ../web/vendor/protobuf.light.min.js
//   cp node_modules/long/umd/index.js ../web/vendor/long.js
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const here = new URL('..', import.meta.url);
const vendored = [
  ['node_modules/protobufjs/dist/light/protobuf.min.js', '../web/vendor/protobuf.light.min.js'],
  ['node_modules/long/umd/index.js', '../web/vendor/long.js'],
];

for (const [installed, copy] of vendored) {
  test(`clients/web/vendor has the installed ${installed}`, () => {
    assert.ok(readFileSync(new URL(copy, here)).equals(readFileSync(new URL(installed, here))), `${copy} differs from ${installed}: copy it again`);
  });
}
