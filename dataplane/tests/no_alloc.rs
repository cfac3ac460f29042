//! Proves the per-request path allocates nothing after warm-up, counted by a global allocator:
//! routing alone (`backend_label`, the route lookup, the activity guard), and every request
//! proxied end to end.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::net::SocketAddr;

use plane_dataplane::{backend_label, RouteTable};

thread_local! {
    /// Allocations made by this thread: other test-harness threads cannot disturb the count.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct CountingAllocator;

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        note_proxy_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        note_proxy_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn routing_and_counting_do_not_allocate() {
    let table = RouteTable::new("plane.localhost");
    let names: Vec<String> = (0..1000).map(|i| format!("backend-{i}")).collect();
    let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    table.set_ready_many(names.iter().map(|n| (n.as_str(), addr)));
    let hosts = [
        "BACKEND-500.Plane.Localhost:9090",
        "backend-1.plane.localhost",
        "missing.plane.localhost",
        "a.b.plane.localhost",
        "backend-1.example.com",
    ];
    let route_once = |host: &str| {
        let route = backend_label(host, table.cluster())
            .ok()
            .and_then(|label| table.lookup(label));
        if let Some(route) = &route {
            drop(black_box(route.track()));
        }
        route.is_some()
    };
    // Warm-up: arc-swap registers this thread's debt slots on first use.
    for host in hosts {
        route_once(host);
    }

    let probe = allocations();
    drop(black_box(Box::new(1u8)));
    assert_eq!(allocations(), probe + 1, "the counting allocator counts");

    let before = allocations();
    let mut hits = 0;
    for _ in 0..1000 {
        for host in hosts {
            hits += usize::from(route_once(black_box(host)));
        }
    }
    let allocated = allocations() - before;
    assert_eq!(hits, 2000);
    assert_eq!(
        allocated, 0,
        "routing allocated {allocated} times in 5000 lookups"
    );
}

thread_local! {
    /// Set on the thread that runs the proxy: its allocations are the ones counted below.
    static IS_PROXY_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Allocations made on the proxy's thread.
static PROXY_ALLOCATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn note_proxy_allocation() {
    if IS_PROXY_THREAD.try_with(Cell::get).unwrap_or(false) {
        PROXY_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The whole request path, end to end over loopback: a keep-alive client sends GETs and
/// POSTs (length-framed and chunked bodies) through the proxy to a backend answering with
/// length-framed and chunked bodies. The proxy runs alone on its own thread (a current-thread
/// runtime, as `plane proxy --threads 1`); after warm-up, not one allocation happens there per
/// request. (The proxy path holds no hyper: its own parser and pool are all there is to count.)
#[test]
fn proxied_requests_do_not_allocate_after_warm_up() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    // The backend: a plain thread answering each request on a keep-alive connection.
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let backend_addr = backend.local_addr().expect("backend addr");
    std::thread::spawn(move || {
        for stream in backend.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut have = 0;
                loop {
                    let Some(end) = find(&buf[..have], b"\r\n\r\n") else {
                        match stream.read(&mut buf[have..]) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => have += n,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let mut used = end + 4;
                    if let Some(len) = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                    {
                        while have < used + len {
                            match stream.read(&mut buf[have..]) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => have += n,
                            }
                        }
                        used += len;
                    } else if head.contains("transfer-encoding: chunked") {
                        while find(&buf[used..have], b"0\r\n\r\n").is_none() {
                            match stream.read(&mut buf[have..]) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => have += n,
                            }
                        }
                        used += find(&buf[used..have], b"0\r\n\r\n").unwrap_or(0) + 5;
                    }
                    let answer: &[u8] = if head.starts_with("get /chunked") {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                    };
                    if stream.write_all(answer).is_err() {
                        return;
                    }
                    buf.copy_within(used..have, 0);
                    have -= used;
                }
            });
        }
    });

    // The proxy, alone on its thread.
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        IS_PROXY_THREAD.with(|p| p.set(true));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind proxy");
            let table = RouteTable::new("plane.localhost");
            table.set_ready("a", backend_addr);
            addr_tx
                .send(listener.local_addr().expect("proxy addr"))
                .expect("send addr");
            let _ = plane_dataplane::serve(
                listener,
                table,
                plane_dataplane::ProxyConfig::default(),
                std::future::pending(),
            )
            .await;
        });
    });
    let proxy_addr = addr_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("proxy started");

    let mut client = TcpStream::connect(proxy_addr).expect("connect");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let requests: [&[u8]; 3] = [
        b"GET /chunked HTTP/1.1\r\nHost: a.plane.localhost\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
        b"POST /form HTTP/1.1\r\nHost: a.plane.localhost\r\nContent-Length: 11\r\n\r\nhello=world",
        b"PUT /doc HTTP/1.1\r\nHost: a.plane.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    let mut answer = vec![0u8; 4096];
    let mut exchange = |request: &[u8]| {
        client.write_all(request).expect("request");
        let mut have = 0;
        // Every answer ends in "hello" (length-framed) or the last chunk.
        while !(answer[..have].ends_with(b"hello") || answer[..have].ends_with(b"0\r\n\r\n")) {
            let n = client.read(&mut answer[have..]).expect("answer");
            assert!(n > 0, "proxy closed the connection");
            have += n;
        }
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    };
    for _ in 0..200 {
        for request in requests {
            exchange(request);
        }
    }
    let before = PROXY_ALLOCATIONS.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        before > 0,
        "the proxy thread's allocations are counted (its connection buffers at least)"
    );
    for _ in 0..1000 {
        for request in requests {
            exchange(request);
        }
    }
    let during = PROXY_ALLOCATIONS.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(
        during, 0,
        "allocations on the proxy thread over 3,000 proxied requests"
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
