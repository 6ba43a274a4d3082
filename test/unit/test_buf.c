/* gw_buf: fixed capacity, append/consume/compact; gw_slice comparisons. */
#include "core/buf.h"
#include "tap.h"

static void test_append_consume(void)
{
    struct gw_buf b;
    gw_buf_init(&b, 8);
    is(gw_buf_append(&b, "abcd", 4), 0, "append fits");
    is(gw_buf_append(&b, "efgh", 4), 0, "append fills to capacity");
    is(gw_buf_append(&b, "i", 1), -1, "append past capacity refused");
    is(b.len, 8, "nothing copied on refusal");
    gw_buf_consume(&b, 3);
    ok(memcmp(gw_buf_head(&b), "defgh", 5) == 0, "consume advances the head");
    is(gw_buf_room(&b), 3, "room counts consumed bytes");
    is(gw_buf_append(&b, "xyz", 3), 0, "append compacts when the tail is short");
    ok(memcmp(gw_buf_head(&b), "defghxyz", 8) == 0, "bytes kept in order across compaction");
    is(b.off, 0, "compaction moved the data to the start");
    gw_buf_consume(&b, 8);
    is(b.len, 0, "all consumed");
    is(b.off, 0, "empty buffer rewinds");
    gw_buf_free(&b);
    ok(b.data == NULL, "free clears the pointer");
}

static void test_slices(void)
{
    struct gw_slice s = gw_slice("Content-Length", 14);
    ok(gw_slice_ieq(s, "content-length"), "ieq ignores case");
    ok(!gw_slice_eq(s, "content-length"), "eq is case-sensitive");
    ok(gw_slice_eq(s, "Content-Length"), "eq matches exactly");
    ok(!gw_slice_ieq(s, "content-lengt"), "ieq checks the length");
    ok(gw_slice_ieq(GW_SLICE_LIT(""), ""), "empty slices compare equal");
}

int main(void)
{
    subtest("append/consume", test_append_consume);
    subtest("slices", test_slices);
    return done_testing();
}
