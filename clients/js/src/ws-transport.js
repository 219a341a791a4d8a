// The WebSocket transport (browsers, and Node 22+ where WebSocket is global). See transport.js for the
// contract and docs/protocol.md §1.1 for the framing: every binary message carries whole frames, in both
// directions. ChatClient writes each frame with one write(), so each goes out as one binary message.

export class WebSocketTransport {
  #url;
  #socket = null;
  #closed = false;
  onData = () => {};
  onClose = () => {};

  /** @param {string} url  e.g. 'wss://chat.example.com:7885/chat' */
  constructor(url) {
    this.#url = url;
  }

  connect() {
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(this.#url);
      } catch (error) {
        reject(error);
        return;
      }
      this.#socket = socket;
      socket.binaryType = 'arraybuffer';
      let open = false;
      socket.onopen = () => {
        open = true;
        resolve();
      };
      socket.onmessage = (event) => {
        // A text message breaks the protocol; the broker never sends one.
        if (event.data instanceof ArrayBuffer) this.onData(new Uint8Array(event.data));
      };
      // 'error' carries no detail in browsers; 'close' always follows it.
      socket.onerror = () => {};
      socket.onclose = (event) => {
        if (!open) {
          reject(new Error(`WebSocket to ${this.#url} failed (close code ${event.code})`));
          return;
        }
        this.#reportClose(event.wasClean && event.code === 1000 ? undefined : new Error(`WebSocket closed (${event.code} ${event.reason})`));
      };
    });
  }

  write(bytes) {
    if (this.#socket !== null && this.#socket.readyState === 1) this.#socket.send(bytes);
  }

  /** Closes after what is queued has gone (a WebSocket sends in order before its close frame). */
  end() {
    this.#socket?.close(1000);
  }

  destroy() {
    // Browsers cannot abort a WebSocket harder than close(); the client ignores whatever it still reports.
    this.#socket?.close();
  }

  #reportClose(error) {
    if (this.#closed) return;
    this.#closed = true;
    this.onClose(error);
  }
}

/** A transport factory for ChatClient's `transport` option. */
export function webSocketTransport(url) {
  return () => new WebSocketTransport(url);
}
