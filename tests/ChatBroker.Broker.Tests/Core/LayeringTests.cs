using System.Reflection;
using System.Text.RegularExpressions;
using ChatBroker.Broker.Messaging;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>
/// The messaging core (Broker/Messaging, Broker/Push) owns the types it needs from sessions: sessions depend on
/// the core, never the reverse (docs/architecture in README's layout section).
/// </summary>
public partial class LayeringTests
{
    private static readonly string[] CoreFolders = ["Broker/Messaging", "Broker/Push"];
    private static readonly string[] CoreNamespaces = ["ChatBroker.Broker.Messaging", "ChatBroker.Broker.Push"];
    private const string SessionsNamespace = "ChatBroker.Broker.Sessions";

    [Fact]
    public void No_core_source_file_imports_or_names_sessions()
    {
        var root = RepositoryRoot();
        var offenders = new List<string>();
        var files = 0;
        foreach (var folder in CoreFolders)
        {
            foreach (var file in Directory.EnumerateFiles(Path.Combine(root, folder), "*.cs", SearchOption.AllDirectories))
            {
                files++;
                var lines = File.ReadAllLines(file);
                for (var i = 0; i < lines.Length; i++)
                {
                    if (SessionsReference().IsMatch(lines[i]))
                    {
                        offenders.Add($"{Path.GetRelativePath(root, file)}:{i + 1}: {lines[i].Trim()}");
                    }
                }
            }
        }

        Assert.True(files > 5, $"found only {files} core source files under {root}");
        Assert.True(offenders.Count == 0, "the core refers to Sessions:\n" + string.Join('\n', offenders));
    }

    [Fact]
    public void No_core_type_has_a_member_of_a_sessions_type()
    {
        var offenders = new List<string>();
        var coreTypes = 0;
        foreach (var type in typeof(ChatService).Assembly.GetTypes())
        {
            // Nested types are included: async state machines and closures hold an async method's locals.
            if (!IsCore(type))
            {
                continue;
            }

            coreTypes++;
            CheckType(type.BaseType, type.FullName!, offenders);
            foreach (var implemented in type.GetInterfaces())
            {
                CheckType(implemented, type.FullName!, offenders);
            }

            const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
            foreach (var field in type.GetFields(all))
            {
                CheckType(field.FieldType, $"{type.FullName}.{field.Name}", offenders);
            }

            foreach (var method in type.GetMethods(all))
            {
                CheckType(method.ReturnType, $"{type.FullName}.{method.Name}", offenders);
                foreach (var parameter in method.GetParameters())
                {
                    CheckType(parameter.ParameterType, $"{type.FullName}.{method.Name}({parameter.Name})", offenders);
                }

                foreach (var local in method.GetMethodBody()?.LocalVariables ?? [])
                {
                    CheckType(local.LocalType, $"{type.FullName}.{method.Name} (a local)", offenders);
                }
            }

            foreach (var constructor in type.GetConstructors(all))
            {
                foreach (var parameter in constructor.GetParameters())
                {
                    CheckType(parameter.ParameterType, $"{type.FullName}..ctor({parameter.Name})", offenders);
                }
            }
        }

        Assert.True(coreTypes > 10, $"found only {coreTypes} core types");
        Assert.True(offenders.Count == 0, "core types refer to Sessions types:\n" + string.Join('\n', offenders));
    }

    [Fact]
    public void The_check_recognises_a_sessions_import()
    {
        Assert.Matches(SessionsReference(), "using ChatBroker.Broker.Sessions;");
        Assert.Matches(SessionsReference(), "    var s = (ChatBroker.Broker.Sessions.DeviceSession)link;");
        Assert.Matches(SessionsReference(), "using static ChatBroker.Broker.Sessions.SessionOutbox;");
        Assert.DoesNotMatch(SessionsReference(), "/// Sessions registered or removed during the walk");
    }

    private static bool IsCore(Type type)
    {
        var ns = type.Namespace ?? "";
        foreach (var core in CoreNamespaces)
        {
            if (ns == core || ns.StartsWith(core + ".", StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    private static void CheckType(Type? type, string where, List<string> offenders)
    {
        if (type is null)
        {
            return;
        }

        if (type.HasElementType)
        {
            CheckType(type.GetElementType(), where, offenders);
            return;
        }

        if (type.IsGenericType)
        {
            foreach (var argument in type.GetGenericArguments())
            {
                CheckType(argument, where, offenders);
            }
        }

        if (type.Namespace is { } ns && (ns == SessionsNamespace || ns.StartsWith(SessionsNamespace + ".", StringComparison.Ordinal)))
        {
            offenders.Add($"{where}: {type.FullName}");
        }
    }

    private static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "ChatBroker.sln")))
            {
                return directory.FullName;
            }
        }

        throw new InvalidOperationException($"ChatBroker.sln not found above {AppContext.BaseDirectory}");
    }

    // A using directive (plain, static or alias) or a qualified name naming the Sessions namespace.
    [GeneratedRegex(@"^\s*using\s+(static\s+)?(\w+\s*=\s*)?(global::)?ChatBroker\.Broker\.Sessions\b|\bBroker\.Sessions\.\w", RegexOptions.CultureInvariant)]
    private static partial Regex SessionsReference();
}
