using System.Diagnostics;
using System.Globalization;

namespace ChatBroker.LoadTests;

/// <summary>
/// A child process of the harness (`chatbroker-load hold …`) that holds a share of a connection-heavy run,
/// because one process may have at most 20,000 open files. Parent and child talk in lines: the child
/// prints READY, PROGRESS n, CONNECTED ok failed ms, CLOSED; the parent writes GO and CLOSE.
/// </summary>
public sealed class ClientProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<(long Ok, long Failed, double Ms, double CpuMs)> _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _progress;

    private ClientProcess(Process process)
    {
        _process = process;
        _process.OutputDataReceived += (_, e) => OnLine(e.Data);
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                Console.Error.WriteLine($"[client {_process.Id}] {e.Data}");
            }
        };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        _ = _process.WaitForExitAsync().ContinueWith(_ =>
        {
            var error = new InvalidOperationException($"client process {_process.Id} exited with {_process.ExitCode}");
            _ready.TrySetException(error);
            _connected.TrySetException(error);
            _closed.TrySetResult();
        }, TaskScheduler.Default);
    }

    /// <summary>Connections this child has logged in so far.</summary>
    public long Progress => Volatile.Read(ref _progress);

    public Task Ready => _ready.Task;

    public Task<(long Ok, long Failed, double Ms, double CpuMs)> Connected => _connected.Task;

    public static ClientProcess Start(BrokerLauncher broker, string userPrefix, long first, long count, int sources, int concurrency)
    {
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        info.ArgumentList.Add(typeof(ClientProcess).Assembly.Location);
        foreach (var a in new[]
        {
            "hold",
            "--target", broker.TcpEndPoint.ToString(),
            "--token-secret", broker.SecretBase64,
            "--user-prefix", userPrefix,
            "--first", first.ToString(CultureInfo.InvariantCulture),
            "--hold-count", count.ToString(CultureInfo.InvariantCulture),
            "--sources", sources.ToString(CultureInfo.InvariantCulture),
            "--concurrency", concurrency.ToString(CultureInfo.InvariantCulture),
        })
        {
            info.ArgumentList.Add(a);
        }

        return new ClientProcess(Process.Start(info) ?? throw new InvalidOperationException("could not start a client process"));
    }

    public void Go() => _process.StandardInput.WriteLine("GO");

    public async Task CloseAsync()
    {
        if (!_process.HasExited)
        {
            await _process.StandardInput.WriteLineAsync("CLOSE").ConfigureAwait(false);
            await _process.StandardInput.FlushAsync().ConfigureAwait(false);
        }

        await _closed.Task.WaitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
    }

    private void OnLine(string? line)
    {
        if (line is null)
        {
            return;
        }

        var parts = line.Split(' ');
        switch (parts[0])
        {
            case "READY":
                _ready.TrySetResult();
                break;
            case "PROGRESS":
                Volatile.Write(ref _progress, long.Parse(parts[1], CultureInfo.InvariantCulture));
                break;
            case "CONNECTED":
                var ok = long.Parse(parts[1], CultureInfo.InvariantCulture);
                Volatile.Write(ref _progress, ok);
                _connected.TrySetResult((ok, long.Parse(parts[2], CultureInfo.InvariantCulture), double.Parse(parts[3], CultureInfo.InvariantCulture), double.Parse(parts[4], CultureInfo.InvariantCulture)));
                break;
            case "CLOSED":
                _closed.TrySetResult();
                break;
            default:
                Console.WriteLine($"[client {_process.Id}] {line}");
                break;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            try
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException)
            {
            }
        }

        _process.Dispose();
    }
}
