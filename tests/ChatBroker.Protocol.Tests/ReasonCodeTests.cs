using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol.Tests;

public class ReasonCodeTests
{
    [Fact]
    public void Every_reason_code_lies_in_a_documented_range()
    {
        foreach (var code in Enum.GetValues<ReasonCode>())
        {
            var value = (int)code;
            Assert.True(value is >= 0 and <= 15 or >= 16 and <= 47 or >= 48 and <= 63 or >= 64 and <= 79 or >= 80 and <= 95 or >= 96 and <= 111, code.ToString());
            Assert.True(value < 128, "fits one varint byte");
        }
    }

    [Fact]
    public void Protocol_and_auth_errors_are_fatal_request_errors_are_not()
    {
        Assert.False(ReasonCodes.IsFatal(ReasonCode.Success));
        Assert.True(ReasonCodes.IsFatal(ReasonCode.MalformedBody));
        Assert.True(ReasonCodes.IsFatal(ReasonCode.ProtocolViolation));
        Assert.True(ReasonCodes.IsFatal(ReasonCode.TokenExpired));
        Assert.True(ReasonCodes.IsFatal(ReasonCode.SlowConsumer));
        Assert.False(ReasonCodes.IsFatal(ReasonCode.NotAMember));
        Assert.False(ReasonCodes.IsFatal(ReasonCode.RateLimited));
        Assert.False(ReasonCodes.IsFatal(ReasonCode.ServerBusy));
    }

    [Fact]
    public void Every_reason_code_has_a_recommended_client_action()
    {
        Assert.Equal(ClientAction.None, ReasonCodes.RecommendedAction(ReasonCode.Success));
        Assert.Equal(ClientAction.Reauthenticate, ReasonCodes.RecommendedAction(ReasonCode.TokenExpired));
        Assert.Equal(ClientAction.FixClient, ReasonCodes.RecommendedAction(ReasonCode.MissingField));
        Assert.Equal(ClientAction.ReconnectWithBackoff, ReasonCodes.RecommendedAction(ReasonCode.SlowConsumer));
        Assert.Equal(ClientAction.RetryRequest, ReasonCodes.RecommendedAction(ReasonCode.RateLimited));
        Assert.Equal(ClientAction.GiveUp, ReasonCodes.RecommendedAction(ReasonCode.DeviceRevoked));
        Assert.Equal(ClientAction.StayDisconnected, ReasonCodes.RecommendedAction(ReasonCode.SessionTakenOver));
    }
}
