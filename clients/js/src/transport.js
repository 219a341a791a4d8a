// The transport contract between ChatClient and a byte stream. ChatClient takes a factory
// `() => transport` and calls it for every connection attempt, so TCP (tcp-transport.js, Node) and a
// WebSocket transport (browsers; binary messages carrying frames) plug in the same way.
//
// A transport object has:
//   connect(): Promise<void>      resolves once bytes can be written; rejects if the connection fails
//   write(bytes: Uint8Array): void queue bytes (whole frames) for sending, in order
//   end(): void                    send what is queued, then close (after DISCONNECT)
//   destroy(): void                close at once, dropping anything queued
//   onData: (chunk: Uint8Array) => void   set by the client before connect(); chunks cut anywhere
//   onClose: (error?: Error) => void      set by the client; called exactly once after connect() resolved
export {};
