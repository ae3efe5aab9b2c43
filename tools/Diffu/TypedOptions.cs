using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Numerics;

namespace DiffuSharp.Cli;

/// <summary>
/// Numeric options that check their values when the command line is parsed and say what is wrong in words
/// ("--steps: 'abc' is not an integer", "--top-p: 2 is out of range: must be greater than 0 and at most 1")
/// rather than naming a CLR type. NaN is never a number here, and infinities and values beyond the type
/// (float reads "1e39" as infinity) are out of range. Every numeric option of `diffu` is made by these.
/// </summary>
public static class TypedOptions
{
    /// <summary>An integer option with a default, accepting min..max (max: the type's largest when null).</summary>
    public static Option<T> Integer<T>(string name, string description, T defaultValue, T min, T? max = null)
        where T : struct, IBinaryInteger<T>, IMinMaxValue<T> => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = result => result.Tokens.Count == 0 ? defaultValue : ParseInteger(result, name, min, max) ?? default,
    };

    /// <summary>An integer option without a default (null when not given), accepting min..max.</summary>
    public static Option<T?> OptionalInteger<T>(string name, string description, T min, T? max = null)
        where T : struct, IBinaryInteger<T>, IMinMaxValue<T> => new(name)
    {
        Description = description,
        CustomParser = result => result.Tokens.Count == 0 ? null : ParseInteger(result, name, min, max),
    };

    /// <summary>A double option with a default, accepting finite values from min (excluded when <paramref name="minExclusive"/>) to max.</summary>
    public static Option<double> Double(string name, string description, double defaultValue, double min, double max = double.MaxValue,
        bool minExclusive = false) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = result => result.Tokens.Count == 0 ? defaultValue : ParseReal(result, name, min, max, minExclusive) ?? default,
    };

    /// <summary>A float option with a default, accepting finite values from min (excluded when <paramref name="minExclusive"/>) to max.</summary>
    public static Option<float> Float(string name, string description, float defaultValue, double min, double max = float.MaxValue,
        bool minExclusive = false) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = result => result.Tokens.Count == 0 ? defaultValue : (float?)ParseReal(result, name, min, Math.Min(max, float.MaxValue), minExclusive) ?? default,
    };

    /// <summary>A float option without a default (null when not given), accepting finite values from min (excluded when <paramref name="minExclusive"/>) to max.</summary>
    public static Option<float?> OptionalFloat(string name, string description, double min, double max = float.MaxValue, bool minExclusive = false) => new(name)
    {
        Description = description,
        CustomParser = result => result.Tokens.Count == 0 ? null : (float?)ParseReal(result, name, min, Math.Min(max, float.MaxValue), minExclusive),
    };

    /// <summary>The value, or null after adding the error (the parse then fails, so the value is never used).</summary>
    static T? ParseInteger<T>(ArgumentResult result, string name, T min, T? max) where T : struct, IBinaryInteger<T>, IMinMaxValue<T>
    {
        string text = result.Tokens[0].Value;
        if (!BigInteger.TryParse(text, NumberStyles.AllowLeadingSign | NumberStyles.AllowLeadingWhite | NumberStyles.AllowTrailingWhite,
                CultureInfo.InvariantCulture, out var value))
        {
            result.AddError($"{name}: {Quote(text)} is not an integer");
            return null;
        }
        T upper = max ?? T.MaxValue;
        if (value < BigInteger.CreateChecked(min) || value > BigInteger.CreateChecked(upper))
        {
            string range = max is null ? $"at least {min}" : $"from {min} to {upper}";
            result.AddError($"{name}: {text.Trim()} is out of range: must be {range}");
            return null;
        }
        return T.CreateChecked(value);
    }

    static double? ParseReal(ArgumentResult result, string name, double min, double max, bool minExclusive)
    {
        string text = result.Tokens[0].Value;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || double.IsNaN(value))
        {
            result.AddError($"{name}: {Quote(text)} is not a number");
            return null;
        }
        if (value < min || minExclusive && value == min || value > max)
        {
            string lower = minExclusive ? $"greater than {Show(min)}" : $"at least {Show(min)}";
            result.AddError($"{name}: {text.Trim()} is out of range: must be {lower} and at most {Show(max)}");
            return null;
        }
        return value;
    }

    static string Quote(string text) => text.Length == 0 ? "an empty value" : $"'{text}'";

    /// <summary>A bound as people write it: 0.5, 1, 3.4e38.</summary>
    static string Show(double value) =>
        Math.Abs(value) >= 1e15 ? value.ToString("0.#e0", CultureInfo.InvariantCulture) : value.ToString(CultureInfo.InvariantCulture);
}
