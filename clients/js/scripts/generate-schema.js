// Regenerates src/chat-schema.js from Protocol/chat.proto:  node scripts/generate-schema.js
//
// The client ships the schema as a protobufjs JSON descriptor inside an ES module rather than
// parsing the .proto at run time, so a browser imports it like any other module: no build step, no
// extra fetch, and only protobufjs's "light" runtime (no .proto parser) is needed to encode and decode.
// `node scripts/generate-schema.js --check` exits 1 when the committed file is stale (run by the tests).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

const here = dirname(fileURLToPath(import.meta.url));
export const protoPath = join(here, '..', '..', '..', 'Protocol', 'chat.proto');
export const schemaPath = join(here, '..', 'src', 'chat-schema.js');

export function renderSchema() {
  const root = protobuf.parse(readFileSync(protoPath, 'utf8'), { keepCase: true }).root;
  const json = JSON.stringify(root.toJSON(), null, 2);
  return '// Generated from Protocol/chat.proto by `node scripts/generate-schema.js`. Do not edit.\n' +
    `export default ${json};\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const text = renderSchema();
  if (process.argv.includes('--check')) {
    if (readFileSync(schemaPath, 'utf8') !== text) {
      console.error('src/chat-schema.js is out of date: run node scripts/generate-schema.js');
      process.exit(1);
    }
  } else {
    writeFileSync(schemaPath, text);
  }
}
