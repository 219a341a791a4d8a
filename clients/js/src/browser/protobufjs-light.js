// For browsers without a bundler: map the bare specifier 'protobufjs/light.js' to this file with an
// import map, after loading protobufjs's UMD build (dist/light/protobuf.min.js, which sets
// globalThis.protobuf) and long's (umd/index.js, which sets globalThis.Long, for exact 64-bit ids).
export default globalThis.protobuf;
