using System.Reflection;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>An <see cref="IChatStore"/> that passes every call to the real store after telling an observer which
/// method was called and with what (tests of the order or the number of store calls).</summary>
public class ObservedStore : DispatchProxy
{
    private IChatStore _inner = null!;
    private Action<MethodInfo, object?[]?> _observe = null!;

    public static IChatStore Over(IChatStore inner, Action<MethodInfo, object?[]?> observe)
    {
        var proxy = Create<IChatStore, ObservedStore>();
        var observed = (ObservedStore)(object)proxy;
        observed._inner = inner;
        observed._observe = observe;
        return proxy;
    }

    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        _observe(targetMethod!, args);
        try
        {
            return targetMethod!.Invoke(_inner, args);
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
            throw;
        }
    }
}
