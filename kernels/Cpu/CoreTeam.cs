namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// Threads that run one job together, one per core, and may wait for each other inside it (<see cref="TeamBarrier"/>):
/// the matmul packs a shared block of b in parallel and every member then multiplies its rows with it. The thread
/// pool cannot host such jobs: Parallel.For may run two iterations one after the other on a single thread, and a
/// barrier between them would never open. The helpers start on first use and sleep between jobs; a job started
/// while the team is busy (from another thread, or from inside a job) runs on its caller alone.
/// </summary>
static class CoreTeam
{
    public static int Size { get; } = Environment.ProcessorCount;

    static readonly object Gate = new();
    static Helper[]? helpers;

    /// <summary>
    /// Runs body(member, members, barrier) on members threads at once (the caller is member 0) and returns when all
    /// have finished; the first exception thrown by any member is rethrown here.
    /// </summary>
    public static void Run(int members, Action<int, int, TeamBarrier> body)
    {
        members = Math.Clamp(members, 1, Size);
        if (members == 1 || !Monitor.TryEnter(Gate))
        {
            body(0, 1, TeamBarrier.Alone);
            return;
        }
        try
        {
            helpers ??= StartHelpers();
            var job = new Job(members, body);
            for (int i = 1; i < members; i++) helpers[i - 1].Post(job, i);
            try
            {
                body(0, members, job.Barrier);
            }
            catch (Exception e)
            {
                job.Fail(e);
            }
            job.WaitForHelpers();
            if (job.Error is not null) throw new AggregateException(job.Error);
        }
        finally
        {
            Monitor.Exit(Gate);
        }
    }

    static Helper[] StartHelpers()
    {
        var started = new Helper[Size - 1];
        for (int i = 0; i < started.Length; i++) started[i] = new Helper(i + 1);
        return started;
    }

    sealed class Job(int members, Action<int, int, TeamBarrier> body)
    {
        int pending = members - 1;
        public readonly TeamBarrier Barrier = new(members);
        public Exception? Error { get; private set; }

        public void Execute(int member)
        {
            try
            {
                body(member, members, Barrier);
            }
            catch (Exception e)
            {
                Fail(e);
            }
            Interlocked.Decrement(ref pending);
        }

        public void Fail(Exception e)
        {
            lock (this) Error ??= e;
            // A member that failed never reaches the barriers the others wait at: open them for good.
            Barrier.Break();
        }

        public void WaitForHelpers()
        {
            var spin = new SpinWait();
            while (Volatile.Read(ref pending) > 0) spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    sealed class Helper
    {
        readonly SemaphoreSlim wake = new(0);
        Job? job;
        int member;

        public Helper(int index)
        {
            new Thread(Loop) { IsBackground = true, Name = $"DiffuSharp core team {index}" }.Start();
        }

        public void Post(Job next, int memberIndex)
        {
            job = next;
            member = memberIndex;
            wake.Release();
        }

        void Loop()
        {
            while (true)
            {
                wake.Wait();
                // Taken before running: the next job may be posted as soon as this one is done.
                var current = job!;
                job = null;
                current.Execute(member);
            }
        }
    }
}

/// <summary>A spinning barrier for the members of one <see cref="CoreTeam"/> job.</summary>
sealed class TeamBarrier(int members)
{
    public static readonly TeamBarrier Alone = new(1);

    int arrived;
    volatile int phase;
    volatile bool broken;

    /// <summary>Returns once every member has called Wait as many times as this one (at once for a team of one).</summary>
    public void Wait()
    {
        if (members == 1) return;
        int current = phase;
        if (Interlocked.Increment(ref arrived) == members)
        {
            arrived = 0;
            phase = current + 1;
            return;
        }
        var spin = new SpinWait();
        while (phase == current && !broken) spin.SpinOnce(sleep1Threshold: -1);
    }

    public void Break() => broken = true;
}
