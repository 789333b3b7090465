/* neighbour: a module loaded beside redis-pay in its tests, playing a
 * careless neighbour. From inside its keyspace notification handler it
 * deletes or overwrites (with RedisModule_Call) the key a redis-pay event is
 * about, so the record is freed while redis-pay's command, timer or
 * replicated write is still running. redis-pay must not touch a record
 * after raising an event for it.
 *
 *   NEIGHBOUR.ON <event|*> <del|set|none> [SCRIBBLE]
 *       act on that redis-pay event ("*": every pay.* event). SCRIBBLE: after
 *       taking a key, allocate blocks of the sizes a record uses and fill
 *       them, so that reading freed memory reads garbage, not the old record.
 *   NEIGHBOUR.TAKEN
 *       how many keys it has taken.
 *
 * Built by the tests with `cc -shared -fPIC`, against the redismodule.h the
 * redis-module crate ships. */

#include <string.h>
#include <strings.h>

#include "redismodule.h"

static char target[64] = "";
static enum { NONE, DEL, SET } action = NONE;
static int scribble = 0;
static long long taken = 0;

#define BLOCKS 48
static void *blocks[BLOCKS];

/* New blocks first (they take the most recently freed ones), then the old
 * ones go. */
static void scribble_over_freed(void) {
    static const size_t sizes[] = {8, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256};
    const size_t n_sizes = sizeof sizes / sizeof sizes[0];
    void *fresh[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        size_t n = sizes[i % n_sizes];
        fresh[i] = RedisModule_Alloc(n);
        memset(fresh[i], 0xA5, n);
    }
    for (int i = 0; i < BLOCKS; i++) {
        if (blocks[i]) RedisModule_Free(blocks[i]);
        blocks[i] = fresh[i];
    }
}

static int on_event(RedisModuleCtx *ctx, int type, const char *event, RedisModuleString *key) {
    REDISMODULE_NOT_USED(type);
    if (action == NONE || strncmp(event, "pay.", 4) != 0) return REDISMODULE_OK;
    if (strcmp(target, "*") != 0 && strcmp(target, event) != 0) return REDISMODULE_OK;
    RedisModuleCallReply *reply = action == DEL
        ? RedisModule_Call(ctx, "DEL", "!s", key)
        : RedisModule_Call(ctx, "SET", "!sc", key, "taken by the neighbour");
    if (reply) RedisModule_FreeCallReply(reply);
    taken++;
    if (scribble) scribble_over_freed();
    return REDISMODULE_OK;
}

static int on_cmd(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 3 && argc != 4) return RedisModule_WrongArity(ctx);
    size_t len;
    const char *event = RedisModule_StringPtrLen(argv[1], &len);
    if (len >= sizeof target) return RedisModule_ReplyWithError(ctx, "ERR event name too long");
    const char *what = RedisModule_StringPtrLen(argv[2], NULL);
    if (!strcasecmp(what, "del")) action = DEL;
    else if (!strcasecmp(what, "set")) action = SET;
    else if (!strcasecmp(what, "none")) action = NONE;
    else return RedisModule_ReplyWithError(ctx, "ERR action is del, set or none");
    memcpy(target, event, len);
    target[len] = '\0';
    scribble = argc == 4 && !strcasecmp(RedisModule_StringPtrLen(argv[3], NULL), "scribble");
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

static int taken_cmd(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    REDISMODULE_NOT_USED(argv);
    REDISMODULE_NOT_USED(argc);
    return RedisModule_ReplyWithLongLong(ctx, taken);
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    REDISMODULE_NOT_USED(argv);
    REDISMODULE_NOT_USED(argc);
    if (RedisModule_Init(ctx, "neighbour", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_SubscribeToKeyspaceEvents(ctx, REDISMODULE_NOTIFY_ALL, on_event) ==
        REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "neighbour.on", on_cmd, "", 0, 0, 0) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "neighbour.taken", taken_cmd, "", 0, 0, 0) ==
        REDISMODULE_ERR)
        return REDISMODULE_ERR;
    return REDISMODULE_OK;
}
