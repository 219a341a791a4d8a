// Generated from Protocol/chat.proto by `node scripts/generate-schema.js`. Do not edit.
export default {
  "nested": {
    "chatbroker": {
      "nested": {
        "v1": {
          "options": {
            "csharp_namespace": "ChatBroker.Protocol.Messages"
          },
          "nested": {
            "PacketType": {
              "values": {
                "PACKET_TYPE_UNSPECIFIED": 0,
                "PACKET_TYPE_CONNECT": 16,
                "PACKET_TYPE_CONNACK": 20,
                "PACKET_TYPE_DISCONNECT": 24,
                "PACKET_TYPE_ERROR": 28,
                "PACKET_TYPE_PING": 32,
                "PACKET_TYPE_PONG": 36,
                "PACKET_TYPE_SEND": 48,
                "PACKET_TYPE_SENT": 52,
                "PACKET_TYPE_DELIVER": 56,
                "PACKET_TYPE_ACK": 64,
                "PACKET_TYPE_READ": 68,
                "PACKET_TYPE_RECEIPT": 72,
                "PACKET_TYPE_SYNC": 80,
                "PACKET_TYPE_SYNC_DONE": 84,
                "PACKET_TYPE_HISTORY": 96,
                "PACKET_TYPE_HISTORY_PAGE": 100,
                "PACKET_TYPE_GROUP_REQUEST": 112,
                "PACKET_TYPE_GROUP_RESULT": 116,
                "PACKET_TYPE_PRESENCE_SET": 128,
                "PACKET_TYPE_PRESENCE_SUBSCRIBE": 132,
                "PACKET_TYPE_PRESENCE_SUBSCRIBED": 136,
                "PACKET_TYPE_PRESENCE": 140,
                "PACKET_TYPE_TYPING": 144,
                "PACKET_TYPE_TYPING_NOTICE": 148,
                "PACKET_TYPE_KEYS_UPLOAD": 160,
                "PACKET_TYPE_KEYS_UPLOADED": 164,
                "PACKET_TYPE_FETCH_KEYS": 168,
                "PACKET_TYPE_KEY_BUNDLE": 172,
                "PACKET_TYPE_SETTINGS": 176,
                "PACKET_TYPE_SETTINGS_RESULT": 180
              }
            },
            "ReasonCode": {
              "values": {
                "REASON_CODE_SUCCESS": 0,
                "REASON_CODE_NORMAL_DISCONNECT": 1,
                "REASON_CODE_SESSION_TAKEN_OVER": 2,
                "REASON_CODE_SERVER_SHUTTING_DOWN": 3,
                "REASON_CODE_KEEPALIVE_TIMEOUT": 4,
                "REASON_CODE_MALFORMED_LENGTH": 16,
                "REASON_CODE_FRAME_TOO_LARGE": 17,
                "REASON_CODE_UNKNOWN_PACKET_TYPE": 18,
                "REASON_CODE_INVALID_FLAGS": 19,
                "REASON_CODE_MALFORMED_BODY": 20,
                "REASON_CODE_MISSING_FIELD": 21,
                "REASON_CODE_INVALID_FIELD": 22,
                "REASON_CODE_PROTOCOL_VIOLATION": 23,
                "REASON_CODE_UNSUPPORTED_VERSION": 24,
                "REASON_CODE_TRUNCATED_FRAME": 25,
                "REASON_CODE_BAD_TOKEN": 48,
                "REASON_CODE_TOKEN_EXPIRED": 49,
                "REASON_CODE_IDENTITY_MISMATCH": 50,
                "REASON_CODE_DEVICE_REVOKED": 51,
                "REASON_CODE_NOT_A_MEMBER": 64,
                "REASON_CODE_NOT_GROUP_ADMIN": 65,
                "REASON_CODE_CONVERSATION_NOT_FOUND": 66,
                "REASON_CODE_USER_NOT_FOUND": 67,
                "REASON_CODE_GROUP_FULL": 68,
                "REASON_CODE_KEYS_NOT_FOUND": 69,
                "REASON_CODE_BAD_REQUEST": 70,
                "REASON_CODE_RATE_LIMITED": 80,
                "REASON_CODE_SLOW_CONSUMER": 81,
                "REASON_CODE_TOO_MANY_DEVICES": 82,
                "REASON_CODE_TOO_MANY_SUBSCRIPTIONS": 83,
                "REASON_CODE_SERVER_BUSY": 96,
                "REASON_CODE_SERVER_UNAVAILABLE": 97
              }
            },
            "Capability": {
              "values": {
                "CAPABILITY_NONE": 0,
                "CAPABILITY_RECEIPTS": 1,
                "CAPABILITY_TYPING": 2,
                "CAPABILITY_PRESENCE": 4,
                "CAPABILITY_MEDIA": 8
              }
            },
            "ContentType": {
              "values": {
                "CONTENT_TYPE_TEXT": 0,
                "CONTENT_TYPE_IMAGE": 1,
                "CONTENT_TYPE_VIDEO": 2,
                "CONTENT_TYPE_AUDIO": 3,
                "CONTENT_TYPE_FILE": 4,
                "CONTENT_TYPE_LOCATION": 5,
                "CONTENT_TYPE_CONTACT": 6,
                "CONTENT_TYPE_STICKER": 7,
                "CONTENT_TYPE_REACTION": 8,
                "CONTENT_TYPE_ENCRYPTED": 9,
                "CONTENT_TYPE_SYSTEM": 15
              }
            },
            "Connect": {
              "fields": {
                "protocol_version": {
                  "type": "uint32",
                  "id": 1
                },
                "user_id": {
                  "type": "string",
                  "id": 2
                },
                "device_id": {
                  "type": "string",
                  "id": 3
                },
                "token": {
                  "type": "string",
                  "id": 4
                },
                "keepalive_s": {
                  "type": "uint32",
                  "id": 5
                },
                "resume_inbox_seq": {
                  "type": "uint64",
                  "id": 6
                },
                "resume_conversations": {
                  "rule": "repeated",
                  "type": "ConversationCursor",
                  "id": 7
                },
                "capabilities": {
                  "type": "uint64",
                  "id": 8
                },
                "max_frame_size": {
                  "type": "uint32",
                  "id": 9
                },
                "client_info": {
                  "type": "string",
                  "id": 10
                }
              }
            },
            "Connack": {
              "fields": {
                "reason": {
                  "type": "ReasonCode",
                  "id": 1
                },
                "session_id": {
                  "type": "string",
                  "id": 2
                },
                "server_time_ms": {
                  "type": "uint64",
                  "id": 3
                },
                "keepalive_s": {
                  "type": "uint32",
                  "id": 4
                },
                "max_frame_size": {
                  "type": "uint32",
                  "id": 5
                },
                "capabilities": {
                  "type": "uint64",
                  "id": 6
                },
                "retry_after_ms": {
                  "type": "uint32",
                  "id": 7
                },
                "message": {
                  "type": "string",
                  "id": 8
                },
                "cluster_nodes": {
                  "rule": "repeated",
                  "type": "string",
                  "id": 9
                }
              }
            },
            "Disconnect": {
              "fields": {
                "reason": {
                  "type": "ReasonCode",
                  "id": 1
                },
                "message": {
                  "type": "string",
                  "id": 2
                },
                "retry_after_ms": {
                  "type": "uint32",
                  "id": 3
                }
              }
            },
            "Error": {
              "fields": {
                "reason": {
                  "type": "ReasonCode",
                  "id": 1
                },
                "message": {
                  "type": "string",
                  "id": 2
                },
                "request_id": {
                  "type": "uint64",
                  "id": 3
                },
                "in_reply_to": {
                  "type": "PacketType",
                  "id": 4
                },
                "retry_after_ms": {
                  "type": "uint32",
                  "id": 5
                }
              }
            },
            "Ping": {
              "fields": {}
            },
            "Pong": {
              "fields": {}
            },
            "MediaRef": {
              "fields": {
                "media_id": {
                  "type": "string",
                  "id": 1
                },
                "mime_type": {
                  "type": "string",
                  "id": 2
                },
                "size_bytes": {
                  "type": "uint64",
                  "id": 3
                },
                "sha256": {
                  "type": "bytes",
                  "id": 4
                },
                "width": {
                  "type": "uint32",
                  "id": 5
                },
                "height": {
                  "type": "uint32",
                  "id": 6
                },
                "duration_ms": {
                  "type": "uint32",
                  "id": 7
                },
                "thumbnail": {
                  "type": "bytes",
                  "id": 8
                }
              }
            },
            "Send": {
              "fields": {
                "client_msg_id": {
                  "type": "uint64",
                  "id": 1
                },
                "conversation_id": {
                  "type": "uint64",
                  "id": 2
                },
                "to_user_id": {
                  "type": "string",
                  "id": 3
                },
                "content_type": {
                  "type": "ContentType",
                  "id": 4
                },
                "body": {
                  "type": "bytes",
                  "id": 5
                },
                "media": {
                  "type": "MediaRef",
                  "id": 6
                }
              }
            },
            "Sent": {
              "fields": {
                "client_msg_id": {
                  "type": "uint64",
                  "id": 1
                },
                "conversation_id": {
                  "type": "uint64",
                  "id": 2
                },
                "seq": {
                  "type": "uint64",
                  "id": 3
                },
                "timestamp_ms": {
                  "type": "uint64",
                  "id": 4
                }
              }
            },
            "Deliver": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "seq": {
                  "type": "uint64",
                  "id": 2
                },
                "sender_user_id": {
                  "type": "string",
                  "id": 3
                },
                "sender_device_id": {
                  "type": "string",
                  "id": 4
                },
                "timestamp_ms": {
                  "type": "uint64",
                  "id": 5
                },
                "content_type": {
                  "type": "ContentType",
                  "id": 6
                },
                "body": {
                  "type": "bytes",
                  "id": 7
                },
                "media": {
                  "type": "MediaRef",
                  "id": 8
                },
                "inbox_seq": {
                  "type": "uint64",
                  "id": 9
                },
                "client_msg_id": {
                  "type": "uint64",
                  "id": 10
                }
              }
            },
            "ConversationCursor": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "seq": {
                  "type": "uint64",
                  "id": 2
                }
              }
            },
            "Ack": {
              "fields": {
                "inbox_seq": {
                  "type": "uint64",
                  "id": 1
                },
                "conversations": {
                  "rule": "repeated",
                  "type": "ConversationCursor",
                  "id": 2
                }
              }
            },
            "Read": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "up_to_seq": {
                  "type": "uint64",
                  "id": 2
                }
              }
            },
            "ReceiptKind": {
              "values": {
                "RECEIPT_KIND_UNSPECIFIED": 0,
                "RECEIPT_KIND_DELIVERED": 1,
                "RECEIPT_KIND_READ": 2
              }
            },
            "Receipt": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "kind": {
                  "type": "ReceiptKind",
                  "id": 2
                },
                "from_seq": {
                  "type": "uint64",
                  "id": 3
                },
                "up_to_seq": {
                  "type": "uint64",
                  "id": 4
                },
                "reader_user_id": {
                  "type": "string",
                  "id": 5
                },
                "timestamp_ms": {
                  "type": "uint64",
                  "id": 6
                },
                "reader_device_id": {
                  "type": "string",
                  "id": 7
                }
              }
            },
            "Sync": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "inbox_seq": {
                  "type": "uint64",
                  "id": 2
                },
                "conversations": {
                  "rule": "repeated",
                  "type": "ConversationCursor",
                  "id": 3
                }
              }
            },
            "SyncDone": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "inbox_seq": {
                  "type": "uint64",
                  "id": 2
                },
                "conversations": {
                  "rule": "repeated",
                  "type": "ConversationCursor",
                  "id": 3
                }
              }
            },
            "History": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "conversation_id": {
                  "type": "uint64",
                  "id": 2
                },
                "before_seq": {
                  "type": "uint64",
                  "id": 3
                },
                "limit": {
                  "type": "uint32",
                  "id": 4
                }
              }
            },
            "HistoryPage": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "conversation_id": {
                  "type": "uint64",
                  "id": 2
                },
                "messages": {
                  "rule": "repeated",
                  "type": "Deliver",
                  "id": 3
                },
                "more": {
                  "type": "bool",
                  "id": 4
                }
              }
            },
            "GroupCreate": {
              "fields": {
                "title": {
                  "type": "string",
                  "id": 1
                },
                "member_user_ids": {
                  "rule": "repeated",
                  "type": "string",
                  "id": 2
                }
              }
            },
            "GroupMembers": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "user_ids": {
                  "rule": "repeated",
                  "type": "string",
                  "id": 2
                }
              }
            },
            "GroupAdmin": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "user_id": {
                  "type": "string",
                  "id": 2
                },
                "admin": {
                  "type": "bool",
                  "id": 3
                }
              }
            },
            "GroupRef": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                }
              }
            },
            "GroupListRequest": {
              "fields": {}
            },
            "GroupRequest": {
              "oneofs": {
                "op": {
                  "oneof": [
                    "create",
                    "add_members",
                    "remove_members",
                    "leave",
                    "list",
                    "set_admin",
                    "get"
                  ]
                }
              },
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "create": {
                  "type": "GroupCreate",
                  "id": 2
                },
                "add_members": {
                  "type": "GroupMembers",
                  "id": 3
                },
                "remove_members": {
                  "type": "GroupMembers",
                  "id": 4
                },
                "leave": {
                  "type": "GroupRef",
                  "id": 5
                },
                "list": {
                  "type": "GroupListRequest",
                  "id": 6
                },
                "set_admin": {
                  "type": "GroupAdmin",
                  "id": 7
                },
                "get": {
                  "type": "GroupRef",
                  "id": 8
                }
              }
            },
            "GroupMember": {
              "fields": {
                "user_id": {
                  "type": "string",
                  "id": 1
                },
                "admin": {
                  "type": "bool",
                  "id": 2
                }
              }
            },
            "GroupInfo": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "title": {
                  "type": "string",
                  "id": 2
                },
                "members": {
                  "rule": "repeated",
                  "type": "GroupMember",
                  "id": 3
                },
                "created_ms": {
                  "type": "uint64",
                  "id": 4
                },
                "last_seq": {
                  "type": "uint64",
                  "id": 5
                }
              }
            },
            "GroupResult": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "conversation_id": {
                  "type": "uint64",
                  "id": 2
                },
                "seq": {
                  "type": "uint64",
                  "id": 3
                },
                "groups": {
                  "rule": "repeated",
                  "type": "GroupInfo",
                  "id": 4
                }
              }
            },
            "SystemEvent": {
              "fields": {
                "kind": {
                  "type": "Kind",
                  "id": 1
                },
                "actor_user_id": {
                  "type": "string",
                  "id": 2
                },
                "user_ids": {
                  "rule": "repeated",
                  "type": "string",
                  "id": 3
                },
                "title": {
                  "type": "string",
                  "id": 4
                },
                "admin": {
                  "type": "bool",
                  "id": 5
                }
              },
              "nested": {
                "Kind": {
                  "values": {
                    "KIND_UNSPECIFIED": 0,
                    "KIND_GROUP_CREATED": 1,
                    "KIND_MEMBERS_ADDED": 2,
                    "KIND_MEMBERS_REMOVED": 3,
                    "KIND_MEMBER_LEFT": 4,
                    "KIND_ADMIN_CHANGED": 5,
                    "KIND_TITLE_CHANGED": 6
                  }
                }
              }
            },
            "PresenceStatus": {
              "values": {
                "PRESENCE_STATUS_UNSPECIFIED": 0,
                "PRESENCE_STATUS_ONLINE": 1,
                "PRESENCE_STATUS_AWAY": 2,
                "PRESENCE_STATUS_OFFLINE": 3,
                "PRESENCE_STATUS_HIDDEN": 4
              }
            },
            "PresenceSet": {
              "fields": {
                "status": {
                  "type": "PresenceStatus",
                  "id": 1
                }
              }
            },
            "PresenceSubscribe": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "user_ids": {
                  "rule": "repeated",
                  "type": "string",
                  "id": 2
                },
                "unsubscribe": {
                  "type": "bool",
                  "id": 3
                }
              }
            },
            "Presence": {
              "fields": {
                "user_id": {
                  "type": "string",
                  "id": 1
                },
                "status": {
                  "type": "PresenceStatus",
                  "id": 2
                },
                "last_seen_ms": {
                  "type": "uint64",
                  "id": 3
                }
              }
            },
            "PresenceSubscribed": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "current": {
                  "rule": "repeated",
                  "type": "Presence",
                  "id": 2
                }
              }
            },
            "Typing": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "stopped": {
                  "type": "bool",
                  "id": 2
                }
              }
            },
            "TypingNotice": {
              "fields": {
                "conversation_id": {
                  "type": "uint64",
                  "id": 1
                },
                "user_id": {
                  "type": "string",
                  "id": 2
                },
                "stopped": {
                  "type": "bool",
                  "id": 3
                }
              }
            },
            "SignedPrekey": {
              "fields": {
                "key_id": {
                  "type": "uint32",
                  "id": 1
                },
                "public_key": {
                  "type": "bytes",
                  "id": 2
                },
                "signature": {
                  "type": "bytes",
                  "id": 3
                }
              }
            },
            "OneTimePrekey": {
              "fields": {
                "key_id": {
                  "type": "uint32",
                  "id": 1
                },
                "public_key": {
                  "type": "bytes",
                  "id": 2
                }
              }
            },
            "KeysUpload": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "identity_key": {
                  "type": "bytes",
                  "id": 2
                },
                "signed_prekey": {
                  "type": "SignedPrekey",
                  "id": 3
                },
                "one_time_prekeys": {
                  "rule": "repeated",
                  "type": "OneTimePrekey",
                  "id": 4
                }
              }
            },
            "KeysUploaded": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "one_time_prekeys_remaining": {
                  "type": "uint32",
                  "id": 2
                }
              }
            },
            "FetchKeys": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "user_id": {
                  "type": "string",
                  "id": 2
                },
                "device_id": {
                  "type": "string",
                  "id": 3
                }
              }
            },
            "DeviceKeys": {
              "fields": {
                "device_id": {
                  "type": "string",
                  "id": 1
                },
                "identity_key": {
                  "type": "bytes",
                  "id": 2
                },
                "signed_prekey": {
                  "type": "SignedPrekey",
                  "id": 3
                },
                "one_time_prekey": {
                  "type": "OneTimePrekey",
                  "id": 4
                }
              }
            },
            "KeyBundle": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "user_id": {
                  "type": "string",
                  "id": 2
                },
                "devices": {
                  "rule": "repeated",
                  "type": "DeviceKeys",
                  "id": 3
                }
              }
            },
            "PresenceVisibility": {
              "values": {
                "PRESENCE_VISIBILITY_EVERYONE": 0,
                "PRESENCE_VISIBILITY_CONTACTS": 1,
                "PRESENCE_VISIBILITY_NOBODY": 2
              }
            },
            "Settings": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "set_presence_visibility": {
                  "type": "bool",
                  "id": 2
                },
                "presence_visibility": {
                  "type": "PresenceVisibility",
                  "id": 3
                },
                "replace_contacts": {
                  "type": "bool",
                  "id": 4
                },
                "contacts": {
                  "rule": "repeated",
                  "type": "string",
                  "id": 5
                },
                "add_contacts": {
                  "rule": "repeated",
                  "type": "string",
                  "id": 6
                },
                "remove_contacts": {
                  "rule": "repeated",
                  "type": "string",
                  "id": 7
                }
              }
            },
            "SettingsResult": {
              "fields": {
                "request_id": {
                  "type": "uint64",
                  "id": 1
                },
                "presence_visibility": {
                  "type": "PresenceVisibility",
                  "id": 2
                },
                "contact_count": {
                  "type": "uint32",
                  "id": 3
                }
              }
            }
          }
        }
      }
    }
  }
};
