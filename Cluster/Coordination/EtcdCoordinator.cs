using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;

namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// <see cref="IClusterCoordinator"/> on etcd 3.4+ through dotnet-etcd. Keys (docs/cluster.md):
/// <c>{prefix}/map</c> holds the map (its mod revision is the epoch), <c>{prefix}/nodes/{id}</c> each live
/// node's registration, attached to that node's lease. One watch on the whole prefix feeds
/// <see cref="View"/>; it starts at the revision of a snapshot read in one transaction, so no change falls
/// between the read and the watch, and after any break it reads a new snapshot (a compacted history too).
/// Every request has a deadline of <see cref="ClusterOptions.EtcdTimeout"/>: past it etcd counts as
/// unreachable.
/// </summary>
/// <remarks>
/// One connection per etcd member, used one at a time: a request, keepalive or watch that times out or is refused
/// (a member cut off from its quorum answers "no leader", one behind a partition does not answer at all) moves every
/// later call to the next member. A single channel balancing over all members kept sending a third of the calls, the
/// lease renewals too, to a silent member whose connection still looked open, until HTTP/2 pings (5 s or more, etcd
/// refuses faster ones) closed it: in the checker (seed 324) two nodes on the majority side of a partition lost their
/// 2 s leases that way and were failed over with the two that were cut off.
/// </remarks>
public sealed class EtcdCoordinator : IClusterCoordinator
{
    private static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan MinPingPeriod = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan KeepAliveRetry = TimeSpan.FromMilliseconds(50);

    private readonly ClusterOptions _options;
    private readonly TimeProvider _time;
    private readonly Member[] _members;
    private int _current;
    private readonly ByteString _prefix;
    private readonly ByteString _prefixEnd;
    private readonly ByteString _mapKey;
    private readonly ByteString _nodeKey;
    private readonly string _mapKeyText;
    private readonly string _nodesPrefixText;
    private readonly CancellationTokenSource _stop = new();
    private Task _watchLoop = Task.CompletedTask;
    private Task _keepAliveLoop = Task.CompletedTask;
    private long _leaseId;
    private long _leaseValidUntilTicks;
    private int _started;
    private int _disposed;
    private bool _revokeOnDispose = true;

    public EtcdCoordinator(ClusterOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Validate() is { } error)
        {
            throw new ArgumentException(error, nameof(options));
        }

        if (!options.Enabled)
        {
            throw new ArgumentException("no etcd endpoints given", nameof(options));
        }

        _options = options;
        _time = options.Time;
        Self = new NodeRegistration(options.NodeId, options.ResolvedAdvertiseMesh, options.AdvertiseClient);
        View = new ClusterView(_time);
        _members = new Member[options.EtcdEndpoints.Count];
        for (var i = 0; i < _members.Length; i++)
        {
            _members[i] = new Member(i, options.EtcdEndpoints[i], new EtcdClient(options.EtcdEndpoints[i], configureChannelOptions: ConfigureChannel));
        }

        _current = FirstMember(options.NodeId, _members.Length);
        _prefix = ByteString.CopyFromUtf8(options.EtcdPrefix + "/");
        _prefixEnd = ByteString.CopyFromUtf8(options.EtcdPrefix + "0"); // '0' follows '/': the end of the prefix range
        _mapKeyText = options.MapKey;
        _nodesPrefixText = options.NodesPrefix;
        _mapKey = ByteString.CopyFromUtf8(_mapKeyText);
        _nodeKey = ByteString.CopyFromUtf8(options.NodeKey(options.NodeId));
    }

    public NodeRegistration Self { get; }

    public ClusterView View { get; }

    /// <summary>
    /// Until when this node's lease is certainly alive: the send time of the last renewal etcd confirmed,
    /// plus the TTL it confirmed. etcd starts the TTL when it receives the renewal, after we sent it, so the
    /// lease cannot expire before this on a clock that runs at the same rate (fencing, issue 16).
    /// </summary>
    public DateTimeOffset LeaseValidUntil => new(Interlocked.Read(ref _leaseValidUntilTicks), TimeSpan.Zero);

    /// <summary>How many etcd request timeouts a start keeps retrying an unreachable etcd before it fails.</summary>
    private const int StartAttemptsWindow = 5;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("the coordinator is already started");
        }

        // A busy or briefly leaderless etcd (a member restarting) is retried for a few request timeouts before the start
        // fails: a node restarted by its supervisor in such a moment would otherwise exit again at once.
        var started = _time.GetTimestamp();
        while (true)
        {
            try
            {
                await RegisterAsync(cancellationToken).ConfigureAwait(false);
                break;
            }
            // A deadline surfaces either as DeadlineExceeded or as a cancellation from inside the gRPC client.
            catch (Exception e) when (!cancellationToken.IsCancellationRequested
                && e is RpcException { StatusCode: StatusCode.DeadlineExceeded or StatusCode.Unavailable } or OperationCanceledException
                && _time.GetElapsedTime(started) < _options.EtcdTimeout * StartAttemptsWindow)
            {
                await Task.Delay(_options.EtcdTimeout / 4, _time, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
            {
                throw new ClusterCoordinationException($"cannot register node \"{Self.NodeId}\": {Unreachable(e)}", e);
            }
        }

        _keepAliveLoop = Task.Run(() => KeepAliveLoopAsync(_stop.Token), CancellationToken.None);
        _watchLoop = Task.Run(() => WatchLoopAsync(_stop.Token), CancellationToken.None);

        // Ready once the first snapshot is in the view; give it the time of a few requests.
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_options.EtcdTimeout * 3);
        try
        {
            while (!View.HasMap)
            {
                var changed = View.WaitForChangeAsync(deadline.Token);
                if (View.HasMap)
                {
                    break;
                }

                await changed.ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new ClusterCoordinationException($"registered, but could not read the cluster map from etcd: {View.LastError}");
        }
    }

    public async Task<ClusterMap> ReadMapAsync(CancellationToken cancellationToken)
    {
        RangeResponse response;
        try
        {
            response = await CallAsync(m => m.Kv.RangeAsync(new RangeRequest { Key = _mapKey }, deadline: Deadline(), cancellationToken: cancellationToken), cancellationToken)
                .ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            throw new ClusterCoordinationException($"cannot read the cluster map: {Unreachable(e)}", e);
        }

        var map = response.Kvs.Count == 0 ? ClusterMap.Empty : ClusterMapCodec.DecodeMap(response.Kvs[0].Value.Span, response.Kvs[0].ModRevision);
        View.PublishMap(map);
        return View.Map.Epoch > map.Epoch ? View.Map : map;
    }

    /// <summary>
    /// <see cref="ReadMapAsync"/> for a one-shot command (the CLI's first request): retried as the node's start retries
    /// its registration, for a few request timeouts while etcd misses the deadline or is unavailable — a busy or briefly
    /// leaderless etcd, or this process's first request, which pays for setting up the gRPC client (compiled at its first
    /// call: the broker runs without tiered compilation) inside the same deadline. A refusal, or the end of that window,
    /// throws as <see cref="ReadMapAsync"/> does.
    /// </summary>
    public async Task<ClusterMap> ReadMapPatientlyAsync(CancellationToken cancellationToken)
    {
        var started = _time.GetTimestamp();
        while (true)
        {
            try
            {
                return await ReadMapAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (ClusterCoordinationException e) when (!cancellationToken.IsCancellationRequested
                && e.InnerException is RpcException { StatusCode: StatusCode.DeadlineExceeded or StatusCode.Unavailable } or OperationCanceledException
                && _time.GetElapsedTime(started) < _options.EtcdTimeout * StartAttemptsWindow)
            {
                await Task.Delay(_options.EtcdTimeout / 4, _time, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    public async Task<System.Collections.Immutable.ImmutableArray<NodeRegistration>> ReadLiveMembersAsync(CancellationToken cancellationToken)
    {
        RangeResponse response;
        try
        {
            response = await CallAsync(m => m.Kv.RangeAsync(
                new RangeRequest { Key = ByteString.CopyFromUtf8(_nodesPrefixText), RangeEnd = _prefixEnd },
                deadline: Deadline(), cancellationToken: cancellationToken), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            throw new ClusterCoordinationException($"cannot read the live members: {Unreachable(e)}", e);
        }

        var members = new List<NodeRegistration>(response.Kvs.Count);
        foreach (var kv in response.Kvs)
        {
            if (kv.Key.ToStringUtf8().StartsWith(_nodesPrefixText, StringComparison.Ordinal) && ClusterMapCodec.DecodeRegistration(kv.Value.Span) is { } r)
            {
                members.Add(r);
            }
        }

        return ClusterView.Sorted(members);
    }

    public async Task<MapUpdateResult> TryUpdateMapAsync(ClusterMap proposed, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(proposed);
        if (proposed.Validate() is { } invalid)
        {
            throw new ArgumentException(invalid, nameof(proposed));
        }

        var txn = new TxnRequest();
        // A key that does not exist has mod revision 0, so epoch 0 means "only if there is no map yet".
        txn.Compare.Add(new Compare
        {
            Key = _mapKey,
            Target = Compare.Types.CompareTarget.Mod,
            Result = Compare.Types.CompareResult.Equal,
            ModRevision = proposed.Epoch,
        });
        txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = _mapKey, Value = ByteString.CopyFrom(ClusterMapCodec.EncodeMap(proposed)) } });
        txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = _mapKey } });

        TxnResponse response;
        try
        {
            response = await CallAsync(m => m.Kv.TxnAsync(txn, deadline: Deadline(), cancellationToken: cancellationToken), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            View.RecordError(Unreachable(e));
            return new MapUpdateResult(MapUpdateStatus.Unavailable, View.Map,
                $"map change refused: {Unreachable(e)}. The node keeps serving with the map of epoch {View.Epoch}; " +
                "if the request reached etcd before the answer was lost it may have been applied (the watch will show it).");
        }

        if (response.Succeeded)
        {
            // The transaction's revision is the put's mod revision: the new epoch.
            var applied = proposed with { Epoch = response.Header.Revision };
            View.PublishMap(applied);
            return new MapUpdateResult(MapUpdateStatus.Applied, applied, null);
        }

        var kvs = response.Responses[0].ResponseRange.Kvs;
        var current = kvs.Count == 0 ? ClusterMap.Empty : ClusterMapCodec.DecodeMap(kvs[0].Value.Span, kvs[0].ModRevision);
        View.PublishMap(current);
        return new MapUpdateResult(MapUpdateStatus.Conflict, current,
            $"the map changed: it is at epoch {current.Epoch}, the change was made on epoch {proposed.Epoch}");
    }

    /// <summary>Stops renewing the lease and watching, and leaves the registration to expire, as a crash does.</summary>
    internal void StopAsIfCrashed()
    {
        _revokeOnDispose = false;
        _stop.Cancel();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(_watchLoop, _keepAliveLoop).ConfigureAwait(false); // both end on cancellation without throwing
        var leaseId = Interlocked.Read(ref _leaseId);
        if (_revokeOnDispose && leaseId != 0)
        {
            // A clean leave: revoking deletes the registration at once instead of after the TTL.
            try
            {
                await Current.Lease.LeaseRevokeAsync(new LeaseRevokeRequest { ID = leaseId }, deadline: Deadline()).ConfigureAwait(false);
            }
            catch (RpcException)
            {
                // etcd is gone: the lease expires by itself.
            }
        }

        foreach (var member in _members)
        {
            member.Client.Dispose();
        }

        _stop.Dispose();
    }

    /// <summary>
    /// Puts this node's registration under a new lease. The key must not exist (two live nodes with one id
    /// would share ownership), except that a previous registration of this id may still be waiting for its
    /// lease to expire after a crash: wait for that up to one TTL.
    /// </summary>
    private async Task RegisterAsync(CancellationToken cancellationToken)
    {
        var ttlSeconds = (long)Math.Ceiling(_options.LeaseTtl.TotalSeconds);
        var value = ByteString.CopyFrom(ClusterMapCodec.EncodeRegistration(Self));
        var giveUpAt = _time.GetUtcNow() + _options.LeaseTtl + _options.EtcdTimeout;
        while (true)
        {
            // A new lease per attempt: one granted before a wait would run out during it.
            var sentAt = _time.GetUtcNow();
            var sentStamp = _time.GetTimestamp();
            var grant = await CallAsync(m => m.Lease.LeaseGrantAsync(new LeaseGrantRequest { TTL = ttlSeconds }, deadline: Deadline(), cancellationToken: cancellationToken), cancellationToken)
                .ConfigureAwait(false);

            var txn = new TxnRequest();
            txn.Compare.Add(new Compare
            {
                Key = _nodeKey,
                Target = Compare.Types.CompareTarget.Create,
                Result = Compare.Types.CompareResult.Equal,
                CreateRevision = 0,
            });
            txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = _nodeKey, Value = value, Lease = grant.ID } });
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = _nodeKey } });
            var response = await CallAsync(m => m.Kv.TxnAsync(txn, deadline: Deadline(), cancellationToken: cancellationToken), cancellationToken).ConfigureAwait(false);
            if (response.Succeeded)
            {
                Interlocked.Exchange(ref _leaseId, grant.ID);
                Interlocked.Exchange(ref _leaseValidUntilTicks, (sentAt + TimeSpan.FromSeconds(grant.TTL)).UtcTicks);
                View.RecordLeaseRenewal(sentStamp, TimeSpan.FromSeconds(grant.TTL));
                return;
            }

            await RevokeQuietlyAsync(grant.ID).ConfigureAwait(false);
            if (_time.GetUtcNow() >= giveUpAt)
            {
                var holder = response.Responses[0].ResponseRange.Kvs;
                var holderLease = holder.Count == 0 ? 0 : holder[0].Lease;
                throw new ClusterCoordinationException(
                    $"node id \"{Self.NodeId}\" is registered in etcd by another live node (key {_options.NodeKey(Self.NodeId)}, lease {holderLease:x}); " +
                    "every node needs its own cluster.node_id");
            }

            await Task.Delay(_options.LeaseTtl / 8, _time, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task RevokeQuietlyAsync(long leaseId)
    {
        try
        {
            await Current.Lease.LeaseRevokeAsync(new LeaseRevokeRequest { ID = leaseId }, deadline: Deadline()).ConfigureAwait(false);
        }
        catch (RpcException)
        {
            // It expires by itself.
        }
    }

    /// <summary>
    /// Renews the lease every third of its TTL on one keepalive stream. If etcd says the lease is gone (it
    /// expired while this node was cut off), registers again under a new one.
    /// </summary>
    private async Task KeepAliveLoopAsync(CancellationToken stop)
    {
        var interval = _options.LeaseTtl / 3;
        var retry = TimeSpan.FromMilliseconds(100);
        while (!stop.IsCancellationRequested)
        {
            var member = Current;
            var call = member.Lease.LeaseKeepAlive(cancellationToken: stop);
            try
            {
                while (true)
                {
                    var sentAt = _time.GetUtcNow();
                    var sentStamp = _time.GetTimestamp();

                    // A renewal stuck on a dead etcd member must give way to a new stream (another member) well before
                    // the lease can run out: the renewal sent as the member went silent is lost too, so of the TTL
                    // (3 intervals) one goes by before that send and half of one waiting for its answer, which leaves
                    // 1.5 intervals (1 s of a 2 s lease) to renew at the next member. The send and the answer get one
                    // bound, raced rather than cancelled: a read cancelled on a silent connection took 2 s to return.
                    var renewal = RenewOnceAsync(call, stop);
                    var bound = Min(_options.EtcdTimeout, interval / 2);
                    using (var timer = CancellationTokenSource.CreateLinkedTokenSource(stop))
                    {
                        if (await Task.WhenAny(renewal, Task.Delay(bound, _time, timer.Token)).ConfigureAwait(false) != renewal)
                        {
                            stop.ThrowIfCancellationRequested();
                            Observe(renewal);
                            throw new RpcException(new Status(StatusCode.DeadlineExceeded, $"no keepalive answer within {bound.TotalMilliseconds:0} ms"));
                        }

                        await timer.CancelAsync().ConfigureAwait(false);
                    }

                    var renewed = await renewal.ConfigureAwait(false);
                    if (renewed.TTL <= 0)
                    {
                        View.RecordError($"the lease of node \"{Self.NodeId}\" expired (etcd was out of reach for longer than its TTL); registering again");
                        await RegisterAsync(stop).ConfigureAwait(false);
                        continue;
                    }

                    Interlocked.Exchange(ref _leaseValidUntilTicks, (sentAt + TimeSpan.FromSeconds(renewed.TTL)).UtcTicks);
                    View.RecordLeaseRenewal(sentStamp, TimeSpan.FromSeconds(renewed.TTL));
                    retry = TimeSpan.FromMilliseconds(100);
                    await Task.Delay(interval, _time, stop).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException or ClusterCoordinationException or IOException)
            {
                Failed(member, e);
                View.RecordError($"lease keepalive: {Describe(e)}");
            }
            finally
            {
                Abandon(call);
            }

            if (!await DelayAsync(retry, stop).ConfigureAwait(false))
            {
                return;
            }

            // While the lease may still be alive the next member is tried at once (a 2 s lease leaves no room for a
            // growing backoff: etcd's own leader election takes about a second); after that, back off.
            retry = View.IsLeaseValid(TimeSpan.Zero) ? KeepAliveRetry : Min(retry * 2, MaxRetryDelay);
        }
    }

    /// <summary>
    /// Keeps <see cref="View"/> equal to etcd: a snapshot of the map and the registrations in one
    /// transaction, then a watch from the revision after it. Any break marks the view disconnected and
    /// starts over with a new snapshot.
    /// </summary>
    private async Task WatchLoopAsync(CancellationToken stop)
    {
        var retry = TimeSpan.FromMilliseconds(100);
        var members = new Dictionary<string, NodeRegistration>(StringComparer.Ordinal);
        while (!stop.IsCancellationRequested)
        {
            var member = Current;
            AsyncDuplexStreamingCall<WatchRequest, WatchResponse>? call = null;
            try
            {
                var revision = await ReadSnapshotAsync(member, members, stop).ConfigureAwait(false);
                View.MarkConnected();
                retry = TimeSpan.FromMilliseconds(100);

                // "hasleader" makes an etcd member that loses its quorum end the watch instead of going quiet.
                call = member.Watch.Watch(new Metadata { { "hasleader", "true" } }, cancellationToken: stop);
                await call.RequestStream.WriteAsync(new WatchRequest
                {
                    CreateRequest = new WatchCreateRequest { Key = _prefix, RangeEnd = _prefixEnd, StartRevision = revision + 1 },
                }, stop).ConfigureAwait(false);

                // A quiet watch is asked for progress every heartbeat: etcd answers with its revision, so a
                // member that went silent (a partition sends no reset) is found within two heartbeats and the
                // next watch goes to another member. HTTP/2 pings cannot do this: etcd (grpc-go) answers pings
                // more often than every 5 s with GOAWAY ENHANCE_YOUR_CALM (too_many_pings), so the channel's
                // pings stay at 5 s or more and only back this up. A progress answer is data, which also keeps
                // the server's ping strikes at zero.
                var heartbeat = Min(_options.EtcdTimeout, _options.LeaseTtl / 3);
                var asked = false;
                var next = call.ResponseStream.MoveNext(stop);
                try
                {
                    while (true)
                    {
                        using (var quiet = CancellationTokenSource.CreateLinkedTokenSource(stop))
                        {
                            var tick = Task.Delay(heartbeat, _time, quiet.Token);
                            if (await Task.WhenAny(next, tick).ConfigureAwait(false) != next)
                            {
                                stop.ThrowIfCancellationRequested();
                                if (asked)
                                {
                                    throw new RpcException(new Status(StatusCode.Unavailable,
                                        $"the etcd member did not answer a watch progress request within {heartbeat.TotalMilliseconds:0} ms"));
                                }

                                await call.RequestStream.WriteAsync(new WatchRequest { ProgressRequest = new WatchProgressRequest() }, stop).ConfigureAwait(false);
                                asked = true;
                                continue;
                            }

                            await quiet.CancelAsync().ConfigureAwait(false);
                        }

                        if (!await next.ConfigureAwait(false))
                        {
                            break;
                        }

                        asked = false;
                        var response = call.ResponseStream.Current;
                        next = call.ResponseStream.MoveNext(stop);
                        if (response.Canceled || response.CompactRevision > 0)
                        {
                            throw new RpcException(new Status(StatusCode.Aborted,
                                $"etcd ended the watch ({(response.CompactRevision > 0 ? "history compacted" : response.CancelReason)})"));
                        }

                        if (response.Events.Count > 0)
                        {
                            Apply(response.Events, members);
                        }
                    }
                }
                finally
                {
                    // The call's disposal ends a read still pending; its fault is expected, not unobserved.
                    _ = next.ContinueWith(static t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                }

                throw new RpcException(new Status(StatusCode.Unavailable, "etcd closed the watch"));
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException or ClusterCoordinationException or IOException)
            {
                Failed(member, e);
                View.MarkDisconnected($"watch: {Describe(e)}");
            }
            finally
            {
                if (call is not null)
                {
                    Abandon(call);
                }
            }

            if (!await DelayAsync(retry, stop).ConfigureAwait(false))
            {
                return;
            }

            retry = Min(retry * 2, MaxRetryDelay);
        }
    }

    private async Task<long> ReadSnapshotAsync(Member member, Dictionary<string, NodeRegistration> members, CancellationToken stop)
    {
        var txn = new TxnRequest(); // no compare: the success branch always runs, both reads at one revision
        txn.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = _mapKey } });
        txn.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = ByteString.CopyFromUtf8(_nodesPrefixText), RangeEnd = _prefixEnd } });
        var response = await member.Kv.TxnAsync(txn, deadline: Deadline(), cancellationToken: stop).ConfigureAwait(false);

        members.Clear();
        foreach (var kv in response.Responses[1].ResponseRange.Kvs)
        {
            var key = kv.Key.ToStringUtf8();
            if (key.StartsWith(_nodesPrefixText, StringComparison.Ordinal) && ClusterMapCodec.DecodeRegistration(kv.Value.Span) is { } r)
            {
                members[r.NodeId] = r;
            }
        }

        // Members before the map: StartAsync is done once the view has a map, and by then it must
        // hold the members of the same snapshot (a start that returned with an empty member list
        // failed A_restarted_node_takes_its_id_back_once_its_crashed_registration_expires in CI).
        View.PublishMembers(ClusterView.Sorted(members.Values));
        var mapKvs = response.Responses[0].ResponseRange.Kvs;
        View.PublishMap(mapKvs.Count == 0 ? ClusterMap.Empty : ClusterMapCodec.DecodeMap(mapKvs[0].Value.Span, mapKvs[0].ModRevision));
        return response.Header.Revision;
    }

    private void Apply(Google.Protobuf.Collections.RepeatedField<Mvccpb.Event> events, Dictionary<string, NodeRegistration> members)
    {
        var membersChanged = false;
        foreach (var e in events)
        {
            var key = e.Kv.Key.ToStringUtf8();
            var put = e.Type == Mvccpb.Event.Types.EventType.Put;
            if (key == _mapKeyText)
            {
                if (!put)
                {
                    // Only an operator deletes the map; keep serving with the one we have.
                    View.RecordError($"the cluster map key {_mapKeyText} was deleted in etcd; keeping epoch {View.Epoch}");
                    continue;
                }

                try
                {
                    View.PublishMap(ClusterMapCodec.DecodeMap(e.Kv.Value.Span, e.Kv.ModRevision));
                }
                catch (ClusterCoordinationException ex)
                {
                    View.RecordError(ex.Message);
                }
            }
            else if (key.StartsWith(_nodesPrefixText, StringComparison.Ordinal))
            {
                var id = key[_nodesPrefixText.Length..];
                membersChanged = true;
                if (put && ClusterMapCodec.DecodeRegistration(e.Kv.Value.Span) is { } r && r.NodeId == id)
                {
                    members[id] = r;
                }
                else
                {
                    members.Remove(id);
                }
            }
        }

        if (membersChanged)
        {
            View.PublishMembers(ClusterView.Sorted(members.Values));
        }
    }

    private void ConfigureChannel(GrpcChannelOptions channel)
    {
        var secure = false;
        foreach (var e in _options.EtcdEndpoints)
        {
            secure |= e.StartsWith("https://", StringComparison.OrdinalIgnoreCase);
        }

        if (!secure)
        {
            channel.Credentials = ChannelCredentials.Insecure;
        }

        // HTTP/2 pings are the backstop for a silent etcd (a partition sends no reset); the watch's progress
        // requests and the keepalive's answer deadline find it first. etcd's server takes pings at most every
        // 5 s (--grpc-keepalive-min-time; more often and it closes the connection with ENHANCE_YOUR_CALM, which
        // the checker's quiet watches hit every few seconds with 2 s pings), so never more often than that.
        var ping = _options.EtcdTimeout < MinPingPeriod ? MinPingPeriod : _options.EtcdTimeout;
        channel.HttpHandler = new SocketsHttpHandler
        {
            ConnectTimeout = _options.EtcdTimeout,
            KeepAlivePingDelay = ping,
            KeepAlivePingTimeout = ping,
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always,
            EnableMultipleHttp2Connections = true,
        };
        channel.DisposeHttpClient = true;
    }

    /// <summary>One request to the current member; a failure (not the caller's cancellation) moves later calls to the
    /// next member and is rethrown for the caller to report.</summary>
    private async Task<T> CallAsync<T>(Func<Member, AsyncUnaryCall<T>> call, CancellationToken cancellationToken)
    {
        var member = Current;
        try
        {
            return await call(member).ResponseAsync.ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            Failed(member, e);
            throw;
        }
    }

    private async Task<LeaseKeepAliveResponse> RenewOnceAsync(AsyncDuplexStreamingCall<LeaseKeepAliveRequest, LeaseKeepAliveResponse> call, CancellationToken stop)
    {
        await call.RequestStream.WriteAsync(new LeaseKeepAliveRequest { ID = Interlocked.Read(ref _leaseId) }, stop).ConfigureAwait(false);
        if (!await call.ResponseStream.MoveNext(stop).ConfigureAwait(false))
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "etcd closed the keepalive stream"));
        }

        return call.ResponseStream.Current;
    }

    /// <summary>Disposes a stream call off the loop, on a thread of its own: ending a call on a silent connection blocks
    /// for seconds, which a loop that must reach the next member at once cannot wait for, and which on a pool thread
    /// starved the pool of a 2-core machine (the next renewal waited a second for a thread). Rare: once per switch.</summary>
    private static void Abandon(IDisposable call) => new Thread(call.Dispose) { IsBackground = true, Name = "etcd call disposal" }.Start();

    private static void Observe(Task task) =>
        _ = task.ContinueWith(static t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);

    /// <summary>The member a node starts with: spread over the members by node id, the same at every start.</summary>
    internal static int FirstMember(string nodeId, int count) =>
        (int)(System.IO.Hashing.XxHash3.HashToUInt64(System.Text.Encoding.UTF8.GetBytes(nodeId)) % (ulong)count);

    /// <summary>The member calls go to now.</summary>
    private Member Current => _members[Volatile.Read(ref _current)];

    /// <summary>
    /// A call to <paramref name="member"/> failed: unless a concurrent failure already moved on, later calls go to the
    /// next member. Any failure counts (a refusal such as "no leader" as much as silence): with one member gone the
    /// others serve, and a member that was wrongly left is tried again when its turn comes round.
    /// </summary>
    private void Failed(Member member, Exception e)
    {
        if (_members.Length == 1 || (e is OperationCanceledException && _stop.IsCancellationRequested))
        {
            return;
        }

        var next = (member.Index + 1) % _members.Length;
        if (Interlocked.CompareExchange(ref _current, next, member.Index) == member.Index)
        {
            View.RecordMemberSwitch();
            View.RecordError($"etcd member {member.Endpoint} failed ({Describe(e)}); calls go to {_members[next].Endpoint} now");
        }
    }

    /// <summary>One etcd member's connection (its own channel: a silent member holds up only the calls sent to it).</summary>
    private sealed class Member(int index, string endpoint, EtcdClient client)
    {
        private readonly dotnet_etcd.interfaces.IConnection _connection = client.GetConnection();

        public int Index { get; } = index;

        public string Endpoint { get; } = endpoint;

        public EtcdClient Client { get; } = client;

        public KV.KVClient Kv => _connection.KVClient;

        public Watch.WatchClient Watch => _connection.WatchClient;

        public Lease.LeaseClient Lease => _connection.LeaseClient;
    }

    private DateTime Deadline() => _time.GetUtcNow().UtcDateTime + _options.EtcdTimeout;

    private string Unreachable(RpcException e) =>
        $"etcd ({string.Join(", ", _options.EtcdEndpoints)}) is unreachable: {e.StatusCode} {e.Status.Detail}";

    /// <summary>A deadline can also surface as a cancellation (the gRPC client gives up picking a connection).</summary>
    private string Unreachable(Exception e) => e is RpcException r
        ? Unreachable(r)
        : $"etcd ({string.Join(", ", _options.EtcdEndpoints)}) is unreachable: no answer within {_options.EtcdTimeout.TotalMilliseconds} ms";

    private static string Describe(Exception e) => e is RpcException r ? $"{r.StatusCode} {r.Status.Detail}" : e.Message;

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    private async Task<bool> DelayAsync(TimeSpan delay, CancellationToken stop)
    {
        try
        {
            await Task.Delay(delay, _time, stop).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }
}
