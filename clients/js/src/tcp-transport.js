// The Node TCP transport (net.Socket). See transport.js for the contract.
import net from 'node:net';

export class TcpTransport {
  #host;
  #port;
  #socket = null;
  #closed = false;
  onData = () => {};
  onClose = () => {};

  constructor({ host = '127.0.0.1', port = 7883 } = {}) {
    this.#host = host;
    this.#port = port;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: this.#host, port: this.#port, noDelay: true });
      this.#socket = socket;
      const fail = (error) => reject(error);
      socket.once('error', fail);
      socket.once('connect', () => {
        socket.off('error', fail);
        socket.on('error', () => {}); // 'close' follows and reports it
        socket.on('data', (chunk) => this.onData(chunk));
        socket.on('close', (hadError) => this.#reportClose(hadError ? new Error('connection reset') : undefined));
        resolve();
      });
    });
  }

  write(bytes) {
    if (this.#socket !== null && !this.#socket.destroyed) this.#socket.write(bytes);
  }

  end() {
    this.#socket?.end();
  }

  destroy() {
    this.#socket?.destroy();
  }

  #reportClose(error) {
    if (this.#closed) return;
    this.#closed = true;
    this.onClose(error);
  }
}

/** A transport factory for ChatClient's `transport` option. */
export function tcpTransport(host, port) {
  return () => new TcpTransport({ host, port });
}
