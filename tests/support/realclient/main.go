// Command realclient drives the real Apptainer library client (container-library-client v1.2.2, the
// library behind Apptainer 1.0.0-1.0.2) so the end-to-end tests exercise the exact wire behaviour of
// a real client: no Content-Type on JSON bodies, "BEARER" casing, quoted ETags, blind trust in the
// server's multipart plan.
//
// Usage:
//
//	realclient [--trace] push    --url BASE --token TOK [--arch A] [--description D] FILE e/c/n[:t1,t2]
//	realclient [--trace] pull    --url BASE --token TOK [--arch A] [--concurrent [--concurrency N] [--part-size B]] e/c/n[:tag] OUT
//	realclient [--trace] version --url BASE
//
// Success prints one JSON line on stdout; failure prints the error on stderr and exits 1 (usage errors: 2).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/apptainer/container-library-client/client"
)

// userAgent mimics what Apptainer 1.0.2 sends, so servers see a realistic User-Agent.
var userAgent = fmt.Sprintf("Apptainer/1.0.2 (%s %s) Go/%s", strings.ToUpper(runtime.GOOS[:1])+runtime.GOOS[1:],
	runtime.GOARCH, strings.TrimPrefix(runtime.Version(), "go"))

// errUsage marks command-line mistakes, which exit with status 2 instead of 1.
var errUsage = errors.New("usage")

// options are the flags shared by every subcommand.
type options struct {
	url     string
	token   string
	arch    string
	trace   bool
	timeout time.Duration
}

func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.url, "url", "", "library API base URL (required)")
	fs.StringVar(&o.token, "token", "", "auth token (empty: no Authorization header)")
	fs.StringVar(&o.arch, "arch", "amd64", "image architecture")
	fs.BoolVar(&o.trace, "trace", o.trace, "log every HTTP request and the library's debug log to stderr")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "overall deadline for the operation")
}

// stderrLogger forwards the library's debug log to stderr (only with --trace).
type stderrLogger struct{}

func (stderrLogger) Log(v ...interface{}) {
	fmt.Fprintln(os.Stderr, append([]interface{}{"library:"}, v...)...)
}
func (stderrLogger) Logf(format string, v ...interface{}) {
	fmt.Fprintf(os.Stderr, "library: "+format+"\n", v...)
}

// tracingTransport logs method, URL and status of every request that passes through it.
type tracingTransport struct{ next http.RoundTripper }

func (t tracingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.next.RoundTrip(req)
	if err != nil {
		fmt.Fprintf(os.Stderr, "trace: %s %s -> error: %v\n", req.Method, req.URL, err)
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "trace: %s %s (Content-Type=%q Content-Length=%d) -> %d\n",
		req.Method, req.URL, req.Header.Get("Content-Type"), req.ContentLength, res.StatusCode)
	return res, nil
}

// installTracing wraps http.DefaultTransport: the library sends object-store PUTs and ranged GETs with
// http.DefaultClient and the redirect-less pull request with a fresh http.Client, and both of those use
// http.DefaultTransport, so wrapping it (and giving Config.HTTPClient the same transport) sees everything.
func installTracing() *http.Client {
	http.DefaultTransport = tracingTransport{next: http.DefaultTransport}
	return &http.Client{Transport: http.DefaultTransport}
}

func newClient(o *options) (*client.Client, error) {
	if o.url == "" {
		return nil, fmt.Errorf("%w: --url is required", errUsage)
	}
	cfg := &client.Config{BaseURL: o.url, AuthToken: o.token, UserAgent: userAgent}
	if o.trace {
		cfg.HTTPClient = installTracing()
		cfg.Logger = stderrLogger{}
	}
	return client.NewClient(cfg)
}

// splitRef turns "[library://]e/c/n[:t1,t2]" into the path and its tags ("latest" when none are given),
// the normalisation Apptainer does itself because the library does not.
func splitRef(ref string) (string, []string) {
	ref = strings.TrimPrefix(ref, "library://")
	path, rawTags, found := strings.Cut(ref, ":")
	if !found || rawTags == "" {
		return path, []string{"latest"}
	}
	return path, strings.Split(rawTags, ",")
}

func printJSON(v interface{}) error {
	return json.NewEncoder(os.Stdout).Encode(v)
}

func runPush(args []string, o *options) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	o.register(fs)
	description := fs.String("description", "", "image description")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("%w: push needs FILE and entity/collection/container[:tags]", errUsage)
	}
	c, err := newClient(o)
	if err != nil {
		return err
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	path, tags := splitRef(fs.Arg(1))
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	res, err := c.UploadImage(ctx, f, path, o.arch, tags, *description, nil)
	if err != nil {
		return err
	}
	// res is nil when the server's completion reply carried no containerUrl.
	var containerURL *string
	if res != nil && res.ContainerURL != "" {
		containerURL = &res.ContainerURL
	}
	return printJSON(map[string]interface{}{"ok": true, "containerUrl": containerURL})
}

func runPull(args []string, o *options) error {
	fs := flag.NewFlagSet("pull", flag.ContinueOnError)
	o.register(fs)
	concurrent := fs.Bool("concurrent", false, "use ConcurrentDownloadImage (as apptainer pull does)")
	concurrency := fs.Uint("concurrency", 3, "download workers (Apptainer default 3)")
	partSize := fs.Int64("part-size", 5242880, "ranged GET size in bytes (Apptainer default 5 MiB)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("%w: pull needs entity/collection/container[:tag] and OUTFILE", errUsage)
	}
	c, err := newClient(o)
	if err != nil {
		return err
	}
	path, tags := splitRef(fs.Arg(0))
	if len(tags) != 1 {
		return fmt.Errorf("%w: pull takes exactly one tag", errUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	// Apptainer asks for the image metadata first and checks the hash after the download.
	image, err := c.GetImage(ctx, o.arch, path+":"+tags[0])
	if err != nil {
		return fmt.Errorf("get image: %w", err)
	}
	started := time.Now()
	if err := download(ctx, c, o.arch, path, tags[0], fs.Arg(1), *concurrent,
		&client.Downloader{Concurrency: *concurrency, PartSize: *partSize, BufferSize: 32768}); err != nil {
		return err
	}
	// The download alone, without the hash check after it: what bench/pull.py compares.
	return verify(fs.Arg(1), image.Hash, time.Since(started).Seconds())
}

func download(ctx context.Context, c *client.Client, arch, path, tag, out string, concurrent bool,
	spec *client.Downloader) error {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if concurrent {
		err = c.ConcurrentDownloadImage(ctx, f, arch, path, tag, spec, &client.NoopProgressBar{})
	} else {
		err = c.DownloadImage(ctx, f, arch, path, tag, nil)
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	return err
}

func verify(out, wantHash string, downloadSeconds float64) error {
	gotHash, err := client.ImageHash(out)
	if err != nil {
		return err
	}
	if gotHash != wantHash {
		return fmt.Errorf("hash mismatch: downloaded %s, library says %s", gotHash, wantHash)
	}
	info, err := os.Stat(out)
	if err != nil {
		return err
	}
	return printJSON(map[string]interface{}{"ok": true, "hash": gotHash, "bytes": info.Size(),
		"downloadSeconds": downloadSeconds})
}

func runVersion(args []string, o *options) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	c, err := newClient(o)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	vi, err := c.GetVersion(ctx)
	if err != nil {
		return err
	}
	return printJSON(map[string]interface{}{"ok": true, "version": vi.Version, "apiVersion": vi.APIVersion})
}

func run(args []string) error {
	global := flag.NewFlagSet("realclient", flag.ContinueOnError)
	o := &options{}
	global.BoolVar(&o.trace, "trace", false, "log every HTTP request to stderr")
	global.SetOutput(io.Discard)
	if err := global.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	commands := map[string]func([]string, *options) error{"push": runPush, "pull": runPull, "version": runVersion}
	if global.NArg() == 0 {
		return fmt.Errorf("%w: expected a subcommand: push, pull or version", errUsage)
	}
	command, ok := commands[global.Arg(0)]
	if !ok {
		return fmt.Errorf("%w: unknown subcommand %q", errUsage, global.Arg(0))
	}
	return command(global.Args()[1:], o)
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "realclient:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
