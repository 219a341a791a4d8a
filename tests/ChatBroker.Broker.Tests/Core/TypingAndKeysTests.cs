using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>The typing relay and the key directory over the in-memory store and in-memory devices.</summary>
public sealed class TypingAndKeysTests : IAsyncLifetime
{
    private readonly InMemoryChatStore _store = new();
    private readonly SessionRegistry _registry = new();
    private readonly BrokerMetrics _metrics = new("test");
    private readonly KeysOptions _keysOptions = new() { LowWatermark = 3, MaxOneTimePrekeys = 20 };
    private TypingRelay _typing = null!;
    private KeyDirectory _keys = null!;

    public Task InitializeAsync()
    {
        _typing = new TypingRelay(new ConversationDirectory(_store), _registry, _metrics);
        _keys = new KeyDirectory(_store, _registry, _metrics, _keysOptions);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _store.DisposeAsync();
        _metrics.Dispose();
    }

    private FakeDevice Online(string user, string device, ulong capabilities)
    {
        var d = new FakeDevice(user, device, capabilities);
        _registry.Register(d, 10, out _);
        return d;
    }

    private static KeysUpload Upload(ulong requestId, bool bundle, int firstKey, int count)
    {
        var upload = new KeysUpload { RequestId = requestId };
        if (bundle)
        {
            upload.IdentityKey = ByteString.CopyFrom(1, 2, 3);
            upload.SignedPrekey = new SignedPrekey { KeyId = 9, PublicKey = ByteString.CopyFrom(4, 5), Signature = ByteString.CopyFrom(6, 7) };
        }

        for (var i = firstKey; i < firstKey + count; i++)
        {
            upload.OneTimePrekeys.Add(new Protocol.Messages.OneTimePrekey { KeyId = (uint)i, PublicKey = ByteString.CopyFrom((byte)i) });
        }

        return upload;
    }

    [Fact]
    public async Task Typing_reaches_the_other_members_typing_devices_only()
    {
        var conversation = (await _store.GetOrCreateDirectAsync("alice", "bob")).Id;
        var alicePhone = Online("alice", "phone", (ulong)Capability.Typing);
        var aliceLaptop = Online("alice", "laptop", (ulong)Capability.Typing);
        var bobPhone = Online("bob", "phone", (ulong)Capability.Typing);
        var bobWatch = Online("bob", "watch", 0);

        var result = _typing.Relay(alicePhone, new Typing { ConversationId = conversation });

        Assert.Equal(ReasonCode.Success, result);
        var notice = Assert.IsType<TypingNotice>(Assert.Single(bobPhone.Notices));
        Assert.Equal((conversation, "alice", false), (notice.ConversationId, notice.UserId, notice.Stopped));
        Assert.Empty(bobWatch.Notices);
        Assert.Empty(aliceLaptop.Notices);
        Assert.Equal(0UL, _store.GetLastSeq(conversation));
    }

    [Fact]
    public async Task Typing_into_a_conversation_of_others_or_one_that_does_not_exist_is_NOT_A_MEMBER()
    {
        var conversation = (await _store.GetOrCreateDirectAsync("alice", "bob")).Id;
        var bob = Online("bob", "phone", (ulong)Capability.Typing);
        var mallory = Online("mallory", "phone", (ulong)Capability.Typing);

        Assert.Equal(ReasonCode.NotAMember, _typing.Relay(mallory, new Typing { ConversationId = conversation }));
        Assert.Equal(ReasonCode.NotAMember, _typing.Relay(mallory, new Typing { ConversationId = 999 }));
        Assert.Empty(bob.Notices);
    }

    [Fact]
    public async Task A_first_upload_without_identity_and_signed_prekey_is_refused()
    {
        var bob = Online("bob", "phone", 0);

        var outcome = await _keys.UploadAsync(bob, Upload(1, bundle: false, 1, 5), default);

        Assert.Equal(ReasonCode.BadRequest, outcome.Error);
        Assert.Empty(_store.ListKeyDevices("bob"));
    }

    [Fact]
    public async Task Fetch_of_all_devices_gives_one_bundle_per_device_each_with_its_own_one_time_prekey()
    {
        var phone = Online("bob", "phone", 0);
        var laptop = Online("bob", "laptop", 0);
        Assert.Equal(5U, (await _keys.UploadAsync(phone, Upload(1, bundle: true, 1, 5), default)).Answer!.OneTimePrekeysRemaining);
        await _keys.UploadAsync(laptop, Upload(2, bundle: true, 100, 5), default);

        var outcome = await _keys.FetchAsync(new FetchKeys { RequestId = 3, UserId = "bob" }, 65536, default);

        var bundle = outcome.Answer!;
        Assert.Equal((3UL, "bob"), (bundle.RequestId, bundle.UserId));
        Assert.Equal(["laptop", "phone"], bundle.Devices.Select(d => d.DeviceId).Order(StringComparer.Ordinal));
        var phoneKeys = bundle.Devices.Single(d => d.DeviceId == "phone");
        Assert.Equal(1U, phoneKeys.OneTimePrekey.KeyId);
        Assert.Equal(9U, phoneKeys.SignedPrekey.KeyId);
        Assert.Equal(100U, bundle.Devices.Single(d => d.DeviceId == "laptop").OneTimePrekey.KeyId);
        Assert.Equal(4, _store.CountOneTimePrekeys("bob", "phone"));
    }

    [Fact]
    public async Task Fetch_of_a_user_without_keys_is_KEYS_NOT_FOUND()
    {
        var outcome = await _keys.FetchAsync(new FetchKeys { RequestId = 1, UserId = "nobody" }, 65536, default);
        Assert.Equal(ReasonCode.KeysNotFound, outcome.Error);
        outcome = await _keys.FetchAsync(new FetchKeys { RequestId = 1, UserId = "nobody", DeviceId = "phone" }, 65536, default);
        Assert.Equal(ReasonCode.KeysNotFound, outcome.Error);
    }

    [Fact]
    public async Task Concurrent_fetches_never_hand_out_the_same_one_time_prekey()
    {
        var bob = Online("bob", "phone", 0);
        await _keys.UploadAsync(bob, Upload(1, bundle: true, 1, 20), default);

        var outcomes = await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => Task.Run(() => _keys.FetchAsync(new FetchKeys { UserId = "bob" }, 65536, default))));

        var handedOut = outcomes.Select(o => Assert.Single(o.Answer!.Devices).OneTimePrekey).Where(k => k is not null).Select(k => k.KeyId).ToList();
        Assert.Equal(20, handedOut.Count);
        Assert.Equal(20, handedOut.Distinct().Count());
    }

    [Fact]
    public async Task The_owner_device_hears_when_its_supply_falls_below_the_low_watermark()
    {
        var bob = Online("bob", "phone", 0);
        await _keys.UploadAsync(bob, Upload(1, bundle: true, 1, 4), default);

        await _keys.FetchAsync(new FetchKeys { UserId = "bob" }, 65536, default);
        Assert.Empty(bob.Notices); // 3 left: not below 3

        await _keys.FetchAsync(new FetchKeys { UserId = "bob" }, 65536, default);
        var notice = Assert.IsType<KeysUploaded>(Assert.Single(bob.Notices));
        Assert.Equal((0UL, 2U), (notice.RequestId, notice.OneTimePrekeysRemaining));
    }

    [Fact]
    public async Task Low_supply_notices_come_at_most_once_per_interval_and_again_after_an_upload()
    {
        // Issue 18, defect 7: every fetch below the watermark sent the owner another notice (74 in one run).
        var clock = new ManualClock();
        var keys = new KeyDirectory(_store, _registry, _metrics, new KeysOptions { LowWatermark = 10, MaxOneTimePrekeys = 100, LowNoticeInterval = TimeSpan.FromMinutes(1) }, clock);
        var bob = Online("bob", "phone", 0);
        await keys.UploadAsync(bob, Upload(1, bundle: true, 1, 8), default);

        for (var i = 0; i < 5; i++)
        {
            await keys.FetchAsync(new FetchKeys { UserId = "bob" }, 65536, default);
        }

        Assert.Equal(7U, Assert.IsType<KeysUploaded>(Assert.Single(bob.Notices)).OneTimePrekeysRemaining);

        clock.Advance(TimeSpan.FromSeconds(61));
        await keys.FetchAsync(new FetchKeys { UserId = "bob" }, 65536, default);
        Assert.Equal(2, bob.Notices.Count);

        await keys.UploadAsync(bob, Upload(2, bundle: false, 100, 2), default); // topped up (still below 10)
        await keys.FetchAsync(new FetchKeys { UserId = "bob" }, 65536, default);
        Assert.Equal(3, bob.Notices.Count);
    }

    [Fact]
    public async Task Uploads_past_the_per_device_bound_are_BAD_REQUEST_and_later_uploads_may_omit_the_bundle()
    {
        var bob = Online("bob", "phone", 0);
        await _keys.UploadAsync(bob, Upload(1, bundle: true, 1, 15), default);

        Assert.Equal(ReasonCode.BadRequest, (await _keys.UploadAsync(bob, Upload(2, bundle: false, 100, 6), default)).Error);
        var topUp = await _keys.UploadAsync(bob, Upload(3, bundle: false, 100, 5), default);
        Assert.Equal(20U, topUp.Answer!.OneTimePrekeysRemaining);

        var rotate = new KeysUpload { RequestId = 4, SignedPrekey = new SignedPrekey { KeyId = 10, PublicKey = ByteString.CopyFrom(8), Signature = ByteString.CopyFrom(9) } };
        Assert.Equal(ReasonCode.Success, (await _keys.UploadAsync(bob, rotate, default)).Error);
        var bundle = _store.GetPrekeyBundle("bob", "phone")!;
        Assert.Equal(10U, bundle.SignedPrekeyId);
        Assert.Equal(new byte[] { 1, 2, 3 }, bundle.IdentityKey.ToArray()); // kept from the first upload
    }
}
