// ChatBroker JavaScript client. The TCP transport (Node only) is in './tcp-transport.js' so that
// this entry point loads in a browser too.
export { ChatClient, ChatError, backoffDelay } from './chat-client.js';
export { FrameParser, MAX_REMAINING_LENGTH } from './frame-parser.js';
export {
  Capability, ContentType, DUP, PacketType, PresenceStatus, ProtocolError, ReasonCode, ReceiptKind,
  decodeBody, decodeSystemEvent, encodeFrame, reasonName,
} from './codec.js';
