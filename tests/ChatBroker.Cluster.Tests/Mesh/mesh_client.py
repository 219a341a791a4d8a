"""A standard gRPC client (Debian's python3-grpcio) calling the ChatBroker mesh service.

Usage: mesh_client.py PORT DESCRIPTOR_FILE
DESCRIPTOR_FILE holds mesh.proto's FileDescriptorProto (serialized by the C# test from the generated
code), so the messages are built by the protobuf package from the real schema, without protoc.
Prints the acks it receives as one JSON list.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def message_class(pool, name):
    descriptor = pool.FindMessageTypeByName("chatbroker.mesh." + name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def main():
    port, descriptor_path = sys.argv[1], sys.argv[2]
    with open(descriptor_path, "rb") as f:
        file_proto = descriptor_pb2.FileDescriptorProto.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    MeshBatch = message_class(pool, "MeshBatch")
    MeshAck = message_class(pool, "MeshAck")

    def batches():
        first = MeshBatch(origin="python-node", session=77, stream=0)
        for i in range(1, 4):
            m = first.messages.add()
            m.id, m.epoch, m.kind, m.payload = i, 7, 1, b"py-%d" % i
        yield first
        second = MeshBatch(ack_seen=3)
        stale = second.messages.add()
        stale.id, stale.epoch, stale.kind, stale.payload = 4, 6, 1, b"py-4"
        request = second.messages.add()
        request.id, request.epoch, request.kind, request.payload = 5, 7, 2, b"py-5"
        yield second

    with grpc.insecure_channel("127.0.0.1:%s" % port) as channel:
        link = channel.stream_stream(
            "/chatbroker.mesh.Mesh/Link",
            request_serializer=MeshBatch.SerializeToString,
            response_deserializer=MeshAck.FromString,
        )
        acks = []
        for ack in link(batches(), timeout=30):
            acks.append({
                "acked_through": ack.acked_through,
                "receiver_epoch": ack.receiver_epoch,
                "results": [
                    {"id": r.id, "status": r.status, "reply": r.reply.decode("ascii"), "epoch": r.epoch, "owner": r.owner}
                    for r in ack.results
                ],
            })
    print(json.dumps(acks))


if __name__ == "__main__":
    main()
