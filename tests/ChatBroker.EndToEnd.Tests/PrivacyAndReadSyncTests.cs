using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>Issue 18: the presence privacy setting (checked on every publish) and read state across a user's devices,
/// over real TCP against the real broker process.</summary>
public sealed class PrivacyAndReadSyncTests
{
    private const ulong PresenceCaps = (ulong)(Capability.Presence | Capability.Receipts);

    private static async Task<ulong> MessageAsync(RawDevice from, string to, ulong clientMsgId = 1)
    {
        await from.SendAsync(new Send { ClientMsgId = clientMsgId, ToUserId = to, Body = ByteString.CopyFromUtf8("hi") });
        return (await from.ReceiveAsync<Sent>()).ConversationId;
    }

    /// <summary>Everything the device receives up to the PONG answering a PING sent now (a barrier, no sleep).</summary>
    private static async Task<List<IMessage>> DrainAsync(RawDevice device)
    {
        await device.SendAsync(new Ping());
        var seen = new List<IMessage>();
        while (await device.ReceiveAnyAsync() is { } message and not Pong)
        {
            seen.Add(message);
        }

        return seen;
    }

    private static async Task<SettingsResult> SetAsync(RawDevice device, Settings settings)
    {
        await device.SendAsync(settings);
        return await device.ReceiveAsync<SettingsResult>();
    }

    private static async Task<Presence> SubscribeAsync(RawDevice device, string user)
    {
        await device.SendAsync(new PresenceSubscribe { RequestId = 7, UserIds = { user } });
        return Assert.Single((await device.ReceiveAsync<PresenceSubscribed>()).Current);
    }

    [Fact]
    public async Task Presence_visibility_is_the_users_choice_checked_on_every_publish_and_kept_across_a_restart()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-privacy-" + Guid.NewGuid().ToString("N"));
        try
        {
            await using (var broker = await TestBroker.StartAsync(dataDir, "--set", "presence.debounce=0s"))
            {
                await using var alice = await broker.LoginAsync("alice", "phone", capabilities: PresenceCaps);
                await using var bob = await broker.LoginAsync("bob", "phone", capabilities: PresenceCaps);
                await using var carol = await broker.LoginAsync("carol", "phone", capabilities: PresenceCaps);
                // Both may subscribe: each shares a conversation with alice (one message is enough, as before).
                await MessageAsync(bob, "alice");
                await MessageAsync(carol, "alice");
                await DrainAsync(alice);
                Assert.Equal(PresenceStatus.Online, (await SubscribeAsync(bob, "alice")).Status);

                // Contacts only, and bob is not one: bob is told HIDDEN at once; carol, a contact, sees alice.
                var result = await SetAsync(alice, new Settings { RequestId = 3, SetPresenceVisibility = true, PresenceVisibility = PresenceVisibility.Contacts, AddContacts = { "carol" } });
                Assert.Equal((3UL, PresenceVisibility.Contacts, 1U), (result.RequestId, result.PresenceVisibility, result.ContactCount));
                var hidden = await bob.ReceiveAsync<Presence>();
                Assert.Equal(("alice", PresenceStatus.Hidden, 0UL), (hidden.UserId, hidden.Status, hidden.LastSeenMs));
                Assert.Equal(PresenceStatus.Online, (await SubscribeAsync(carol, "alice")).Status);

                // Every publish checks the setting: alice goes away; carol hears it, bob hears nothing at all.
                await alice.SendAsync(new PresenceSet { Status = PresenceStatus.Away });
                Assert.Equal(PresenceStatus.Away, (await carol.ReceiveAsync<Presence>()).Status);
                Assert.DoesNotContain(await DrainAsync(bob), m => m is Presence);

                // Nobody: carol is told HIDDEN; a change after that reaches no one.
                await SetAsync(alice, new Settings { RequestId = 4, SetPresenceVisibility = true, PresenceVisibility = PresenceVisibility.Nobody });
                Assert.Equal(PresenceStatus.Hidden, (await carol.ReceiveAsync<Presence>()).Status);
                await alice.SendAsync(new PresenceSet { Status = PresenceStatus.Online });
                Assert.DoesNotContain(await DrainAsync(carol), m => m is Presence);
                Assert.DoesNotContain(await DrainAsync(bob), m => m is Presence);

                // A bare SETTINGS reads them; contacts stay while visibility changes.
                result = await SetAsync(alice, new Settings { RequestId = 5 });
                Assert.Equal((PresenceVisibility.Nobody, 1U), (result.PresenceVisibility, result.ContactCount));
            }

            await using (var restarted = await TestBroker.StartAsync(dataDir, "--set", "presence.debounce=0s"))
            {
                await using var alice = await restarted.LoginAsync("alice", "phone", capabilities: PresenceCaps);
                await using var bob = await restarted.LoginAsync("bob", "phone", capabilities: PresenceCaps);
                var seen = await SubscribeAsync(bob, "alice");
                Assert.Equal((PresenceStatus.Hidden, 0UL), (seen.Status, seen.LastSeenMs));

                // Everyone again: bob sees alice's status at once.
                await SetAsync(alice, new Settings { RequestId = 6, SetPresenceVisibility = true, PresenceVisibility = PresenceVisibility.Everyone });
                Assert.Equal(PresenceStatus.Online, (await bob.ReceiveAsync<Presence>()).Status);
            }
        }
        finally
        {
            if (Directory.Exists(dataDir))
            {
                Directory.Delete(dataDir, recursive: true);
            }
        }
    }

    [Fact]
    public async Task A_contact_list_past_the_bound_and_a_reserved_contact_id_are_refused_with_a_reason()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "privacy.max_contacts=2");
        await using var alice = await broker.LoginAsync("alice", "phone");
        await alice.SendAsync(new Settings { RequestId = 9, AddContacts = { "a", "b", "c" } });
        var error = await alice.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.BadRequest, 9UL, PacketType.Settings), (error.Reason, error.RequestId, error.InReplyTo));
        Assert.Contains("privacy.max_contacts", error.Message, StringComparison.Ordinal);

        // The session stays up; an id no user can have is a protocol error, as for every id (closes).
        await alice.SendAsync(new Settings { RequestId = 10, AddContacts = { "#broker" } });
        error = await alice.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.InvalidField, 10UL, PacketType.Settings), (error.Reason, error.RequestId, error.InReplyTo));
        await alice.ReceiveUntilClosedAsync();
    }

    [Fact]
    public async Task A_read_on_one_device_reaches_the_users_other_devices_live_and_on_their_next_connect()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var phone = await broker.LoginAsync("alice", "phone");
        await using var laptop = await broker.LoginAsync("alice", "laptop");
        await using var bob = await broker.LoginAsync("bob", "phone");
        var conversation = await MessageAsync(bob, "alice");
        await MessageAsync(bob, "alice", clientMsgId: 2);
        await phone.ReceiveAsync<Deliver>();
        await phone.ReceiveAsync<Deliver>();

        await phone.SendAsync(new Read { ConversationId = conversation, UpToSeq = 2 });

        var synced = await laptop.ReceiveAsync<Receipt>();
        Assert.Equal((conversation, ReceiptKind.Read, 2UL, "alice", "phone"),
            (synced.ConversationId, synced.Kind, synced.UpToSeq, synced.ReaderUserId, synced.ReaderDeviceId));
        // Bob, the sender, gets the ordinary READ receipt (no device named).
        var toBob = await bob.ReceiveAsync<Receipt>();
        Assert.Equal((ReceiptKind.Read, "alice", ""), (toBob.Kind, toBob.ReaderUserId, toBob.ReaderDeviceId));
        // The reading device itself is not told.
        Assert.DoesNotContain(await DrainAsync(phone), m => m is Receipt);

        // A device that was offline learns the read position when it connects.
        await using var tablet = await broker.LoginAsync("alice", "tablet");
        var stored = await tablet.ReceiveAsync<Receipt>();
        Assert.Equal((conversation, ReceiptKind.Read, 2UL, "alice"), (stored.ConversationId, stored.Kind, stored.UpToSeq, stored.ReaderUserId));
    }
}
