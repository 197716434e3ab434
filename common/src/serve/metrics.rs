//! `/metrics`: the Prometheus text, with the gauges that are cheaper to
//! compute at scrape time than to maintain on the hot path (byte totals,
//! process figures) refreshed just before rendering.

use super::ServerContext;

pub fn render_metrics(ctx: &ServerContext) -> String {
    let process = crate::telemetry::process_stats();
    metrics::counter!("baton_bytes_in_total").absolute(crate::clients::total_bytes_in());
    metrics::counter!("baton_bytes_out_total").absolute(crate::clients::total_bytes_out());
    metrics::gauge!("baton_streams").set(ctx.hub.source_count() as f64);
    metrics::gauge!("baton_clients").set(ctx.clients.count() as f64);
    metrics::gauge!("baton_generation").set(ctx.generation as f64);
    metrics::gauge!("baton_draining").set(if ctx.shutdown.is_draining() { 1.0 } else { 0.0 });
    metrics::gauge!("baton_process_resident_memory_bytes").set((process.rss_kb * 1024) as f64);
    metrics::gauge!("baton_process_cpu_seconds").set(process.cpu_seconds);
    ctx.metrics.render()
}
