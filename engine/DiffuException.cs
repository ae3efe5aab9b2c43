namespace DiffuSharp;

/// <summary>
/// Bad input from outside the program (a malformed file, a bad config, bad arguments). The CLI reports
/// its message on one line and exits with code 2; nothing else is a user error.
/// </summary>
public class DiffuException : Exception
{
    public DiffuException(string message) : base(message) { }
    public DiffuException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A model config (config.json) that is missing fields, has wrong types or asks for something unsupported.</summary>
public sealed class ConfigException : DiffuException
{
    public ConfigException(string path, string problem) : base($"{path}: {problem}") { Path = path; }
    public string Path { get; }
}
